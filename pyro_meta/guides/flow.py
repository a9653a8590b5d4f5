"""``FlowHead``: a conditional normalizing flow ``q(z_t | h_t)`` built from Pyro's conditional transforms.

``eps ~ N(0, I_D)`` (batch ``[T, 1]``) is pushed through ``L`` autoregressive layers conditioned on
``h_t`` (Pyro's ``ConditionalSplineAutoregressive``: monotonic rational-linear splines, Durkan et
al. 2019; or ``ConditionalAffineAutoregressive``), each with its own variable order (identity,
reversed, identity, ...), then through an elementwise affine map ``z = m(h) + s(h) * x`` (the
:class:`~pyro_meta.guides.NormalHead` parameterisation, so that the splines, which act on
``[-bound, bound]`` and are the identity outside it, work on a standardised scale).

Directions and cost (``direction``): with ``"sample"`` (default; an inverse autoregressive flow) a
draw (``rsample``) costs one network pass per layer and ``log_prob`` of the head's own draws is free
(every transform caches its inverse): the direction of the ELBO and IWAE, which score their own
draws. ``log_prob`` of *other* points (forward KL, reweighted wake-sleep, sleep) inverts each
layer with ``D`` sequential passes. ``"density"`` (a masked autoregressive flow: the same layers,
inverted) swaps the costs: ``log_prob`` of any point is one pass per layer, a draw ``D`` passes.
Where a spline bin is steep its inverse is ill-conditioned in float32 (measured on a randomly
perturbed 3-layer flow: up to 6 nats between ``log_prob`` of a draw by the cache and by inversion;
1e-6 in float64). Draw dims broadcast: the conditioning networks expand ``h [T, 1, H]`` to the value's
shape (``[S, T, 1, D]`` under the draws plate). At initialisation every spline is the identity
(equal bins, unit derivatives), every affine layer too, and the head is near ``N(0, I)``.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive, ConditionalSplineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.distributions.transforms import AffineTransform
from torch.nn.functional import softplus

from ..validation import check_int
from .head import ACTIVATIONS, Head, inverse_softplus

__all__ = ["FlowHead"]

TRANSFORMS = ("spline", "affine")
DIRECTIONS = ("sample", "density")
# lower bound Pyro's rational spline adds to every knot derivative (pyro/distributions/transforms/spline.py)
_SPLINE_MIN_DERIVATIVE = 1e-3


class FlowHead(Head):
    """Conditional autoregressive flow on a standard Normal base, conditioned on ``h [T, H]``.

    Parameters
    ----------
    embed_dim, latent_dim, hidden, activation, init_scale
        See :class:`Head` (``hidden`` is the network of the final affine map ``m(h), s(h)``).
    num_layers : int
        Autoregressive layers ``L``.
    transform : "spline" | "affine"
        Rational-linear spline layers (``count_bins`` bins on ``[-bound, bound]``) or affine ones.
    direction : "sample" | "density"
        Which of ``rsample`` and ``log_prob`` of arbitrary points takes one pass per layer (the
        other takes ``D``; see the module docstring): ``"sample"`` for guides trained by the ELBO or
        IWAE, ``"density"`` for guides trained by the forward-KL objectives.
    flow_hidden : sequence of int
        Hidden widths of every layer's conditional MADE network (inputs ``[h, x]``); each at least ``D``.
    count_bins, bound : int, float
        Spline bins and half-width of the spline's box.
    min_scale : float
        Lower bound of the final affine map's scale.
    """

    def __init__(
        self,
        embed_dim: int,
        latent_dim: int,
        num_layers: int = 3,
        transform: str = "spline",
        flow_hidden: Sequence[int] = (32, 32),
        count_bins: int = 8,
        bound: float = 4.0,
        hidden: Sequence[int] = (),
        activation: str = "silu",
        init_scale: float = 1e-2,
        min_scale: float = 1e-3,
        direction: str = "sample",
    ) -> None:
        super().__init__(embed_dim, latent_dim, hidden, activation, init_scale)
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.direction = direction
        check_int("num_layers", num_layers, minimum=0)
        if isinstance(count_bins, bool) or not isinstance(count_bins, int) or count_bins < 2:
            raise ValueError(f"count_bins must be an int >= 2, got {count_bins!r}")
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        if not 0 <= min_scale < 1:
            raise ValueError(f"min_scale must be in [0, 1), got {min_scale}")
        D = self.latent_dim
        flow_hidden = [int(w) for w in flow_hidden]
        if not flow_hidden or any(w < D for w in flow_hidden):
            raise ValueError(f"flow_hidden must be a non-empty sequence of widths >= latent_dim={D}, got {flow_hidden}")
        self.num_layers, self.transform, self.min_scale = num_layers, transform, float(min_scale)
        self.count_bins, self.bound, self.flow_hidden = count_bins, float(bound), tuple(flow_hidden)
        bias = torch.cat([torch.zeros(D), torch.full((D,), inverse_softplus(1.0 - self.min_scale))])
        self._build(2 * D, bias)
        B = count_bins
        param_dims = [B, B, B - 1, B] if transform == "spline" else [1, 1]
        layers = []
        for i in range(num_layers):
            order = torch.arange(D) if i % 2 == 0 else torch.arange(D - 1, -1, -1)
            with warnings.catch_warnings():  # D = 1: Pyro warns that an affine map would do; the splines still help
                warnings.simplefilter("ignore", UserWarning)
                arn = ConditionalAutoRegressiveNN(
                    D,
                    self.embed_dim,
                    flow_hidden,
                    param_dims=param_dims,
                    permutation=order,
                    nonlinearity=ACTIVATIONS[self.activation](),
                )
            last = arn.layers[-1]  # outputs [sum(param_dims) * D], parameter m of variable i at m * D + i
            with torch.no_grad():
                last.weight.normal_(0.0, self.init_scale)
                last.bias.zero_()
                if transform == "spline":  # equal bins (zeros), knot derivatives 1: the identity
                    last.bias[2 * B * D : (3 * B - 1) * D] = inverse_softplus(1.0 - _SPLINE_MIN_DERIVATIVE)
            if transform == "spline":
                layers.append(ConditionalSplineAutoregressive(D, arn, count_bins=B, bound=self.bound, order="linear"))
            else:
                layers.append(ConditionalAffineAutoregressive(arn))
        self.layers = nn.ModuleList(layers)

    def forward(self, h: torch.Tensor) -> dist.TransformedDistribution:
        """``q(z_t | h_t)``: batch ``[T, 1]``, event ``[D]``."""
        raw = self.raw(h)  # validates h; [T, 1, 2D]
        loc, s = raw.chunk(2, -1)
        context = h[:, None, :]  # [T, 1, H], broadcast by the MADE networks against [..., T, 1, D]
        base = dist.Normal(loc.new_zeros(loc.shape), 1.0).to_event(1)
        transforms = [layer.condition(context) for layer in self.layers]
        if self.direction == "density":
            transforms = [t.inv for t in transforms]  # log_prob runs the layers forwards: one pass each
        transforms.append(AffineTransform(loc, self.min_scale + softplus(s), event_dim=1, cache_size=1))
        return dist.TransformedDistribution(base, transforms)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_layers={self.num_layers}, transform={self.transform!r}, "
            f"flow_hidden={self.flow_hidden}, direction={self.direction!r}"
        )
