"""Fused ops of scalegan, each with ``impl="auto" | "ref" | "cpu" | "triton"``
(see ``scalegan.ops._impl``): the Triton kernels live in ``scalegan.kernels``.

* :func:`upsample_conv2d` - nearest-2x upsampling fused into the following 3x3 convolution.
* :func:`minibatch_stddev` - the PGGAN statistic, optionally over every rank's batch.
* :func:`minibatch_discrimination` / :class:`MinibatchDiscrimination` - Salimans et al. 2016,
  without the N x N x B x C intermediate.
"""

from scalegan.ops.minibatch_discrimination import (
    MinibatchDiscrimination,
    minibatch_discrimination,
)
from scalegan.ops.minibatch_stddev import minibatch_stddev
from scalegan.ops.upsample_conv2d import upsample_conv2d

__all__ = ["MinibatchDiscrimination", "minibatch_discrimination", "minibatch_stddev",
           "upsample_conv2d"]
