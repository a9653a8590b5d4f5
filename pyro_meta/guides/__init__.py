"""Amortized guide heads: a task embedding ``h [T, H]`` -> ``q(z_t | context_t)``, batch ``[T, 1]``, event ``[D]``.

Gaussian (:class:`NormalHead`, :class:`LowRankNormalHead`, :class:`FullNormalHead`) and
non-Gaussian (:class:`MixtureHead`, exact pathwise gradients; :class:`FlowHead`, a conditional
spline or affine autoregressive flow) heads, used inside a guide as
``with pyro_meta.task_plate(batch): pyro.sample("z", head(h))``. :class:`BimodalTarget` is a
conditional two-mode density to check that a head represents ambiguity. :class:`AmortizedGuide`
composes a set encoder (:class:`SetEncoder`, mean or attention pooling over a task's observed points)
and a head into a Pyro guide for one task latent site.
"""

from ..nn.set_encoder import SetEncoder
from .amortized import AmortizedGuide, points
from .flow import FlowHead
from .gaussian import FullNormalHead, LowRankNormalHead, NormalHead
from .head import Head
from .mixture import DiagNormalMixture, MixtureHead
from .targets import BimodalTarget

__all__ = [
    "AmortizedGuide",
    "BimodalTarget",
    "DiagNormalMixture",
    "FlowHead",
    "FullNormalHead",
    "Head",
    "LowRankNormalHead",
    "MixtureHead",
    "NormalHead",
    "SetEncoder",
    "points",
]
