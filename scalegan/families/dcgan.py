"""``model.arch=dcgan``: a fixed-resolution DCGAN pair (Radford et al. 2016)."""

from __future__ import annotations

from scalegan.families._image import ImageGAN
from scalegan.models.dcgan import DCGANDiscriminator, DCGANGenerator


class DCGAN(ImageGAN):
    arch = "dcgan"
    augments = True

    @classmethod
    def networks(cls, mc):
        return {"G": DCGANGenerator(mc), "D": DCGANDiscriminator(mc)}


FAMILY = DCGAN
