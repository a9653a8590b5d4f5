"""Per-task Gaussian approximations over the task latents (in unconstrained space).

``TaskGaussian`` holds, for every task-level site, ``loc [T, E]`` and a Cholesky factor
``scale_tril [T, E, E]`` (full rank) or ``scale [T, E]`` (diagonal) of a Gaussian over the
flattened unconstrained value ``u = biject_to(support).inv(z)``; ``q(z) = N(u; loc, L L^T)``
pushed through ``biject_to(support)``. It is fitted to draws of the amortized guide and
serves as the start of ``method="svi"`` and (widened) as the proposal of ``"importance"``.
"""

from __future__ import annotations

from typing import Dict, Mapping

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import biject_to
from torch.distributions.transforms import IndependentTransform, ReshapeTransform, identity_transform

from ..data.batch import TaskBatch
from ..model import SiteInfo, task_plate

__all__ = ["TaskGaussian", "unconstrained_shape"]


def unconstrained_shape(info: SiteInfo) -> torch.Size:
    return torch.Size(biject_to(info.support).inverse_shape(info.event_shape))


def _is_identity(t) -> bool:
    while isinstance(t, IndependentTransform):
        t = t.base_transform
    return t == identity_transform


def _flat(shape: torch.Size) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class TaskGaussian(nn.Module):
    """Gaussian ``q(z_t)`` per task and site; a Pyro guide over the task latents.

    Parameters are ``loc_<site> [T, E]`` and ``tril_<site> [T, E, E]`` (its diagonal stored
    as log) for ``full_rank`` sites, else ``logscale_<site> [T, E]``.
    """

    def __init__(
        self,
        sites: Mapping[str, SiteInfo],
        loc: Dict[str, torch.Tensor],
        scale_tril: Dict[str, torch.Tensor],
        full_rank: Dict[str, bool],
    ) -> None:
        super().__init__()
        self.sites = dict(sites)
        self.full_rank = dict(full_rank)
        self._names = {name: f"s{i}" for i, name in enumerate(self.sites)}
        for name, key in self._names.items():
            self.register_parameter(f"loc_{key}", nn.Parameter(loc[name].detach().clone()))
            L = scale_tril[name].detach()
            if self.full_rank[name]:
                raw = L.tril(-1) + torch.diag_embed(L.diagonal(dim1=-2, dim2=-1).clamp_min(1e-6).log())
                self.register_parameter(f"tril_{key}", nn.Parameter(raw.clone()))
            else:
                diag = L.diagonal(dim1=-2, dim2=-1) if L.dim() == 3 else L
                self.register_parameter(f"logscale_{key}", nn.Parameter(diag.clamp_min(1e-6).log().clone()))

    # ------------------------------------------------------------ fitting
    @classmethod
    def from_draws(
        cls,
        sites: Mapping[str, SiteInfo],
        draws: Mapping[str, torch.Tensor],
        max_full_rank: int = 64,
        jitter: float = 1e-5,
    ) -> "TaskGaussian":
        """Moment-match draws ``{site: [N, T, 1, *event]}`` in unconstrained space.

        Sites with ``E <= max_full_rank`` unconstrained coordinates get a full covariance.
        """
        loc, tril, full = {}, {}, {}
        for name, info in sites.items():
            u = biject_to(info.support).inv(draws[name])  # [N, T, 1, *ushape]
            N, T = u.shape[0], u.shape[1]
            u = u.reshape(N, T, -1)
            E = u.shape[-1]
            m = u.mean(0)
            full[name] = E <= max_full_rank
            if full[name]:
                c = u - m
                cov = torch.einsum("nte,ntf->tef", c, c) / max(N - 1, 1)
                cov = (
                    cov
                    + jitter
                    * torch.eye(E, dtype=u.dtype, device=u.device)
                    * (1 + cov.diagonal(dim1=-2, dim2=-1).mean(-1))[:, None, None]
                )
                tril[name] = torch.linalg.cholesky(cov)
            else:
                tril[name] = u.std(0).clamp_min(1e-6)
            loc[name] = m
        return cls(sites, loc, tril, full)

    # ------------------------------------------------------------ access
    def loc(self, name: str) -> torch.Tensor:
        return getattr(self, f"loc_{self._names[name]}")

    def scale_tril(self, name: str) -> torch.Tensor:
        key = self._names[name]
        if self.full_rank[name]:
            raw = getattr(self, f"tril_{key}")
            return raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
        return torch.diag_embed(getattr(self, f"logscale_{key}").exp())

    def distribution(self, name: str, widen: float = 1.0) -> dist.Distribution:
        """``q`` of site ``name`` in constrained space: batch ``[T, 1]``, event ``event_shape``."""
        info = self.sites[name]
        key = self._names[name]
        loc = self.loc(name)[:, None, :]
        if self.full_rank[name]:
            base = dist.MultivariateNormal(loc, scale_tril=widen * self.scale_tril(name)[:, None])
        else:
            scale = widen * getattr(self, f"logscale_{key}").exp()[:, None, :]
            base = dist.Normal(loc, scale).to_event(1)
        ushape = unconstrained_shape(info)
        transforms = []
        if tuple(ushape) != (_flat(ushape),):
            transforms.append(ReshapeTransform(torch.Size([_flat(ushape)]), ushape))
        t = biject_to(info.support)
        if not _is_identity(t):
            transforms.append(t)
        if not transforms:
            return base
        return dist.TransformedDistribution(base, transforms)

    def guide(self, batch: TaskBatch, widen: float = 1.0) -> Dict[str, torch.Tensor]:
        """A Pyro guide: every task latent drawn from its Gaussian inside the tasks plate."""
        out = {}
        with task_plate(batch):
            for name in self.sites:
                out[name] = pyro.sample(name, self.distribution(name, widen))
        return out

    def log_prob(self, values: Mapping[str, torch.Tensor], widen: float = 1.0) -> torch.Tensor:
        """``sum_site log q(z_site)`` for values ``[N, T, 1, *event]`` -> ``[N, T]``."""
        total = 0.0
        for name in self.sites:
            total = total + self.distribution(name, widen).log_prob(values[name]).squeeze(-1)
        return total
