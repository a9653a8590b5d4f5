"""``BimodalTarget``: a conditional two-mode density to check that a head can represent ambiguity.

``c ~ U(-1, 1)`` is the "context" and the embedding is ``h = c`` (``[N, 1]``);
``p(z | c) = pi(c) N(m(c), s^2 I) + (1 - pi(c)) N(-m(c), s^2 I)`` in ``R^D`` with mode weight
``pi(c) = 0.5 + 0.3 c`` and mode centre ``m(c) = r (cos(pi c / 4), sin(pi c / 4), 0, ..., 0)``
rotating with ``c``: the two modes are ``2 r`` apart, a Gaussian fitted to it covers the gap between them.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = ["BimodalTarget"]


class BimodalTarget:
    """The conditional bimodal density of the module docstring.

    Parameters
    ----------
    latent_dim : int
        ``D >= 2``.
    separation : float
        ``r``: each mode sits at distance ``r`` from the origin.
    scale : float
        ``s``: standard deviation of each mode.
    """

    embed_dim = 1

    def __init__(self, latent_dim: int = 2, separation: float = 2.0, scale: float = 0.4) -> None:
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 2:
            raise ValueError(f"latent_dim must be an int >= 2, got {latent_dim!r}")
        if not separation > 0 or not scale > 0:
            raise ValueError(f"separation and scale must be > 0, got {separation}, {scale}")
        self.latent_dim, self.separation, self.scale = latent_dim, float(separation), float(scale)

    def weight(self, h: torch.Tensor) -> torch.Tensor:
        """``pi(c) [N]`` from ``h [N, 1]``."""
        return 0.5 + 0.3 * h[:, 0]

    def centre(self, h: torch.Tensor) -> torch.Tensor:
        """``m(c) [N, 1, D]`` (the other mode is ``-m(c)``)."""
        angle = math.pi / 4 * h[:, 0]
        m = h.new_zeros(h.shape[0], self.latent_dim)
        m[:, 0], m[:, 1] = self.separation * angle.cos(), self.separation * angle.sin()
        return m[:, None, :]

    def sample_context(self, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``h [num, 1]``, ``c ~ U(-1, 1)``."""
        return torch.rand(num, 1, generator=generator) * 2 - 1

    def sample(
        self, h: torch.Tensor, num_samples: int = 1, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """``z [num_samples, N, 1, D]`` from ``p(z | c)`` for each row of ``h [N, 1]``."""
        N = h.shape[0]
        first = torch.rand(num_samples, N, 1, 1, generator=generator) < self.weight(h)[:, None, None]
        sign = torch.where(first, 1.0, -1.0)
        noise = torch.randn(num_samples, N, 1, self.latent_dim, generator=generator)
        return sign * self.centre(h) + self.scale * noise

    def log_prob(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(z | c)``: ``z [..., N, 1, D]`` -> ``[..., N, 1]``."""
        m, w = self.centre(h), self.weight(h)[:, None]
        normal = torch.distributions.Normal(0.0, self.scale)
        lp1 = normal.log_prob(z - m).sum(-1) + w.log()
        lp2 = normal.log_prob(z + m).sum(-1) + (1 - w).log()
        return torch.logaddexp(lp1, lp2)

    def mode_masses(self, h: torch.Tensor, z: torch.Tensor, radius: float = 2.5) -> torch.Tensor:
        """Fraction of draws ``z [S, N, 1, D]`` within ``radius * s`` of each mode: ``[N, 2]`` (``m(c)``, ``-m(c)``)."""
        m = self.centre(h)
        near = [((z - sign * m).norm(dim=-1) < radius * self.scale).to(z.dtype).mean(0)[:, 0] for sign in (1.0, -1.0)]
        return torch.stack(near, -1)

    def exact_mode_masses(self, h: torch.Tensor, radius: float = 2.5) -> torch.Tensor:
        """What :meth:`mode_masses` converges to under ``p`` itself: ``pi(c) P(chi2_D < radius^2)`` and the rest, ``[N, 2]``.

        (The other mode's mass within the ball is neglected: ``< 1e-6`` when ``r / s >= 3 + radius / 2``.)
        """
        inside = torch.special.gammainc(torch.tensor(self.latent_dim / 2.0), torch.tensor(radius**2 / 2.0))
        w = self.weight(h)
        return torch.stack([w * inside, (1 - w) * inside], -1)

    def sample_pairs(self, num: int, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(h [num, 1], z [num, 1, D])``: contexts and one draw each, the data of a forward-KL fit."""
        h = self.sample_context(num, generator)
        return h, self.sample(h, 1, generator)[0]
