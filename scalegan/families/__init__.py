"""GAN families, one module each, found by ``model.arch``.

``scalegan/families/<arch>.py`` holds the family spec of ``model.arch=<arch>`` (a subclass of
``Family`` named in the module's ``FAMILY``). Adding a family is adding its module: nothing else
lists the families.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from scalegan.families._base import Family, PhaseSpec, Services, Stream

__all__ = ["Family", "PhaseSpec", "Services", "Stream", "archs", "build_family",
           "family_class"]


def archs() -> list[str]:
    """Every ``model.arch`` there is a family module for."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if not m.name.startswith("_"))


def family_class(arch: str) -> type[Family]:
    """The family spec of ``model.arch=arch``; ValueError naming the known ones otherwise."""
    if not isinstance(arch, str) or arch not in archs():
        raise ValueError(f"model.arch={arch!r} is not allowed: expected {' | '.join(archs())}")
    return importlib.import_module(f"scalegan.families.{arch}").FAMILY


def build_family(cfg, svc: Services | None = None) -> Family:
    return family_class(cfg.model.arch)(cfg, svc)
