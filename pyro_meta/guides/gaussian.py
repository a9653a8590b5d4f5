"""Gaussian heads: diagonal, low-rank plus diagonal, and full (Cholesky) covariance.

All three map ``h [T, H]`` to ``N(m(h), Sigma(h))`` with batch shape ``[T, 1]`` and event ``[D]``,
reparameterised (``rsample``), and start near ``N(0, I)``.
"""

from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import torch
from torch.nn.functional import softplus

from ..validation import check_int
from .head import Head, inverse_softplus

__all__ = ["FullNormalHead", "LowRankNormalHead", "NormalHead"]


def _check_min_scale(min_scale: float) -> float:
    if not 0 <= min_scale < 1:
        raise ValueError(f"min_scale must be in [0, 1), got {min_scale}")
    return float(min_scale)


class NormalHead(Head):
    """Diagonal Gaussian ``q(z_t | h_t) = N(m(h_t), diag s(h_t)^2)``, ``s = min_scale + softplus(.)``.

    Parameters
    ----------
    embed_dim, latent_dim, hidden, activation, init_scale
        See :class:`Head`.
    min_scale : float
        Lower bound of every standard deviation.
    """

    def __init__(
        self,
        embed_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (),
        activation: str = "silu",
        init_scale: float = 1e-2,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(embed_dim, latent_dim, hidden, activation, init_scale)
        self.min_scale = _check_min_scale(min_scale)
        D = self.latent_dim
        bias = torch.cat([torch.zeros(D), torch.full((D,), inverse_softplus(1.0 - self.min_scale))])
        self._build(2 * D, bias)

    def distribution(self, raw: torch.Tensor) -> dist.TorchDistribution:
        loc, s = raw.chunk(2, -1)
        return dist.Normal(loc, self.min_scale + softplus(s)).to_event(1)


class LowRankNormalHead(Head):
    """``N(m(h), F(h) F(h)^T + diag d(h))`` with a rank-``r`` factor ``F [D, r]`` and ``d = min_scale^2 + softplus(.)``.

    The factor starts at small random values (``factor_init``, not zero: at ``F = 0`` the gradient
    of ``log q`` with respect to ``F`` vanishes, a saddle the factor would never leave).
    """

    def __init__(
        self,
        embed_dim: int,
        latent_dim: int,
        rank: int = 2,
        hidden: Sequence[int] = (),
        activation: str = "silu",
        init_scale: float = 1e-2,
        min_scale: float = 1e-3,
        factor_init: float = 0.1,
    ) -> None:
        super().__init__(embed_dim, latent_dim, hidden, activation, init_scale)
        check_int("rank", rank)
        self.rank, self.min_scale = rank, _check_min_scale(min_scale)
        D = self.latent_dim
        diag = 1.0 - self.min_scale**2 - rank * factor_init**2  # E[F F^T]_ii = r factor_init^2
        if not diag > 0:
            raise ValueError(
                f"rank * factor_init^2 must be < 1 (a covariance near I at init), got {rank * factor_init**2}"
            )
        bias = torch.cat(
            [torch.zeros(D), factor_init * torch.randn(D * rank), torch.full((D,), inverse_softplus(diag))]
        )
        self._build(D * (rank + 2), bias)

    def distribution(self, raw: torch.Tensor) -> dist.TorchDistribution:
        D, r = self.latent_dim, self.rank
        loc, factor, diag = raw.split([D, D * r, D], -1)
        factor = factor.reshape(factor.shape[:-1] + (D, r))
        return dist.LowRankMultivariateNormal(loc, factor, self.min_scale**2 + softplus(diag))


class FullNormalHead(Head):
    """``N(m(h), L(h) L(h)^T)`` with ``L`` lower triangular: diagonal ``min_scale + softplus(.)``, free below it."""

    def __init__(
        self,
        embed_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (),
        activation: str = "silu",
        init_scale: float = 1e-2,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(embed_dim, latent_dim, hidden, activation, init_scale)
        self.min_scale = _check_min_scale(min_scale)
        D = self.latent_dim
        rows, cols = torch.tril_indices(D, D, offset=-1)
        self.register_buffer("_lower", rows * D + cols, persistent=False)
        n_lower = D * (D - 1) // 2
        bias = torch.cat(
            [torch.zeros(D), torch.full((D,), inverse_softplus(1.0 - self.min_scale)), torch.zeros(n_lower)]
        )
        self._build(2 * D + n_lower, bias)

    def distribution(self, raw: torch.Tensor) -> dist.TorchDistribution:
        D = self.latent_dim
        loc, diag, lower = raw.split([D, D, D * (D - 1) // 2], -1)
        flat = raw.new_zeros(raw.shape[:-1] + (D * D,)).index_copy(-1, self._lower, lower)
        tril = flat.reshape(raw.shape[:-1] + (D, D)) + torch.diag_embed(self.min_scale + softplus(diag))
        return dist.MultivariateNormal(loc, scale_tril=tril)
