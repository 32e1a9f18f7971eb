"""Fused ops of scalegan, each with ``impl="auto" | "ref" | "cpu" | "triton"``
(see ``scalegan.ops._impl``): the Triton kernels live in ``scalegan.kernels``.

* :func:`upsample_conv2d` - nearest-2x upsampling fused into the following 3x3 convolution.
* :func:`minibatch_stddev` - the PGGAN statistic, optionally over every rank's batch.
* :func:`minibatch_discrimination` / :class:`MinibatchDiscrimination` - Salimans et al. 2016,
  without the N x N x B x C intermediate.
* :func:`modulated_conv2d` - StyleGAN2's modulated / demodulated convolution (up=1 or 2).
* :func:`upfirdn2d`, :func:`upsample2d`, :func:`downsample2d`, :func:`setup_filter` - StyleGAN2's
  FIR resampling (plain torch, no ``impl``).
"""

from scalegan.ops.minibatch_discrimination import (
    MinibatchDiscrimination,
    minibatch_discrimination,
)
from scalegan.ops.minibatch_stddev import minibatch_stddev
from scalegan.ops.modulated_conv2d import modulated_conv2d
from scalegan.ops.upfirdn2d import downsample2d, setup_filter, upfirdn2d, upsample2d
from scalegan.ops.upsample_conv2d import upsample_conv2d

__all__ = ["MinibatchDiscrimination", "downsample2d", "minibatch_discrimination",
           "minibatch_stddev", "modulated_conv2d", "setup_filter", "upfirdn2d", "upsample2d",
           "upsample_conv2d"]
