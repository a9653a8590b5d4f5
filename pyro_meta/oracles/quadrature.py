"""Quadrature engine of the oracles for families ``y = c f(x, theta) + o(x, theta) + noise``.

``c`` (uniform prior) is integrated in closed form given ``theta`` (truncated Gaussians), ``theta`` on an
adaptive per-task grid; :class:`SinusoidOracle` and :class:`LineOrSineOracle` are families of it.
"""

from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ..data.batch import TaskBatch
from ..data.line_or_sine import LineOrSine
from ..data.tasks import Sinusoid
from .base import LOG_2PI as _LOG_2PI
from .base import check_regression as _check_regression
from .truncnorm import log_diff_ndtr, log_diff_ndtr_fast, truncnorm_moments, truncnorm_sample

__all__ = ["LineOrSineOracle", "SinusoidOracle"]


class _Family(NamedTuple):
    """``y = c * feature(x, theta) + offset(x, theta) + noise`` with ``theta ~ U[theta_range]``
    (integrated on an adaptive grid) and ``c ~ U[coef_range]`` (integrated in closed form)."""

    theta_range: Tuple[float, float]
    coef_range: Tuple[float, float]
    feature: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [T, N], theta [T, G]) -> [T, N, G]
    offset: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def _sine_family(tasks) -> _Family:
    return _Family(
        tuple(tasks.phase_range),
        tuple(tasks.amplitude_range),
        lambda x, th: torch.sin(x[:, :, None] - th[:, None, :]),
        None,
    )


def _line_family(tasks) -> _Family:
    return _Family(
        tuple(tasks.slope_range),
        tuple(tasks.intercept_range),
        lambda x, th: torch.ones(x.shape + th.shape[-1:], dtype=x.dtype),
        lambda x, th: x[:, :, None] * th[:, None, :],
    )


class _Grid(NamedTuple):
    """Posterior of one family on a per-task grid ``[T, G]`` of theta values."""

    family: _Family
    theta: torch.Tensor  # [T, G]
    logw: torch.Tensor  # [T, G] log p(theta cell, context | family) (-inf on padding)
    mu: torch.Tensor  # [T, G] untruncated Gaussian posterior of c given theta
    tau: torch.Tensor  # [T, G]


class _GridOracle:
    """Bayes-optimal predictive for families ``y = c f(x, theta) + o(x, theta) + N(0, sigma^2)``.

    Given ``theta`` the model is linear in ``c`` with a uniform prior, so ``c`` is integrated exactly
    (truncated Gaussians). ``theta`` is integrated by the midpoint rule on ``num_grid`` cells; when
    the cells that carry mass (log weight within 30 of the best, plus their neighbours) are at most
    ``num_fine // 2``, i.e. the posterior is narrow, ``num_fine`` points are spread evenly over them
    instead (each such cell split into ``num_fine // count`` midpoints).
    """

    def __init__(
        self,
        families: List[_Family],
        log_prior: List[float],
        noise_std: float,
        num_grid: int = 512,
        num_fine: int = 256,
        chunk_elements: int = 2_000_000,
    ) -> None:
        if not noise_std > 0:
            raise ValueError(f"noise_std of the task family must be > 0 for a likelihood-based oracle, got {noise_std}")
        for name, v in (("num_grid", num_grid), ("num_fine", num_fine)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 2:
                raise ValueError(f"{name} must be an int >= 2, got {v!r}")
        self.families, self.log_prior = families, log_prior
        self.noise_std = float(noise_std)
        self.num_grid, self.num_fine = num_grid, num_fine
        self.chunk_elements = chunk_elements

    # ---------------------------------------------------------------- posterior
    def _log_marginal(self, fam: _Family, theta, logq, x, y, m):
        """Per-point ``log p(context, theta cell)`` ``[T, G]`` and the Gaussian posterior of ``c`` given theta."""
        sig2 = self.noise_std**2
        s = fam.feature(x, theta) * m[:, :, None]  # [T, N, G]
        r = y[:, :, None] - (fam.offset(x, theta) if fam.offset is not None else 0.0)
        r = r * m[:, :, None]
        S2 = s.pow(2).sum(1) + 1e-12
        SY, R2 = (s * r).sum(1), r.pow(2).sum(1)
        mu, tau = SY / S2, math.sqrt(sig2) / S2.sqrt()
        lo, hi = fam.coef_range
        n = m.sum(-1, keepdim=True).to(x.dtype)
        log_ml = (
            -0.5 * (R2 - SY * mu) / sig2
            - 0.5 * n * math.log(2 * math.pi * sig2)
            + torch.log(tau)
            + 0.5 * _LOG_2PI
            + log_diff_ndtr((lo - mu) / tau, (hi - mu) / tau)
            - math.log(hi - lo)
        )
        return logq + log_ml, mu, tau

    def _family_grid(self, fam: _Family, x, y, m) -> _Grid:
        T, G0, B = x.shape[0], self.num_grid, self.num_fine
        M = B // 2
        lo, hi = fam.theta_range
        delta = (hi - lo) / G0
        cells = lo + delta * (torch.arange(G0, dtype=x.dtype) + 0.5)
        coarse = cells.expand(T, G0)
        coarse_q = torch.full_like(coarse, -math.log(G0))
        logw0, _, _ = self._log_marginal(fam, coarse, coarse_q, x, y, m)
        sig = logw0 > logw0.max(-1, keepdim=True).values - 30
        sig = F.max_pool1d(sig[:, None].to(x.dtype), 3, 1, 1)[:, 0] > 0  # add neighbours
        count = sig.sum(-1, keepdim=True)  # [T, 1]
        refine = count <= M
        K = (B // count.clamp_min(1)).clamp_min(1)  # midpoints per significant cell
        order = torch.argsort((~sig).to(torch.int8), dim=-1, stable=True)[:, :M]  # significant cells first
        j = torch.arange(B)
        c = j // K  # [T, B]
        valid = c < count
        cell = torch.gather(order, 1, c.clamp_max(M - 1))
        fine = cells[cell] + delta * (((j % K) + 0.5) / K - 0.5)
        fine_q = torch.where(valid, -torch.log(G0 * K.to(x.dtype)), -math.inf)
        G = max(G0, B)
        theta = torch.where(refine, F.pad(fine, (0, G - B), value=lo), F.pad(coarse, (0, G - G0), value=lo))
        logq = torch.where(
            refine,
            F.pad(fine_q, (0, G - B), value=-math.inf),
            F.pad(coarse_q, (0, G - G0), value=-math.inf),
        )
        logw, mu, tau = self._log_marginal(fam, theta, logq, x, y, m)
        return _Grid(fam, theta, logw, mu, tau)

    def _grids(self, batch: TaskBatch) -> List[_Grid]:
        _check_regression(batch, need_y=False)
        if batch.x_dim != 1:
            raise ValueError(f"batch.context_x must have shape [T, Nc, 1], got {tuple(batch.context_x.shape)}")
        d = torch.float64
        x, y, m = batch.context_x[..., 0].to(d), batch.context_y[..., 0].to(d), batch.context_mask
        grids = []
        for fam, lp in zip(self.families, self.log_prior):
            g = self._family_grid(fam, x, y, m)
            grids.append(g._replace(logw=g.logw + lp))
        return grids

    def _pruned_grids(self, batch: TaskBatch) -> List[_Grid]:
        """The grids without points of relative posterior mass below ``exp(-40)`` (the predictive's cost)."""
        grids = self._grids(batch)
        best = torch.stack([g.logw.max(-1).values for g in grids], -1).max(-1, keepdim=True).values
        pruned = []
        for g in grids:
            keep = g.logw > best - 40
            k = int(keep.sum(-1).max())
            if k == 0:
                continue
            idx = torch.topk(g.logw, k, dim=-1).indices
            pruned.append(_Grid(g.family, *(torch.gather(t, 1, idx) for t in (g.theta, g.logw, g.mu, g.tau))))
        return pruned

    def _chunks(self, batch: TaskBatch):
        """Task chunks small enough that ``[T_chunk, Nt, G]`` tensors hold ``chunk_elements``."""
        per_task = max(1, batch.num_points("target")) * max(self.num_grid, self.num_fine) * len(self.families)
        step = max(1, self.chunk_elements // per_task)
        for start in range(0, batch.num_tasks, step):
            idx = list(range(start, min(start + step, batch.num_tasks)))
            yield batch.select(idx)

    def family_log_evidence(self, batch: TaskBatch) -> torch.Tensor:
        """``log p(family) + log p(context | family)``, ``[T, F]`` (float64)."""
        return torch.stack([torch.logsumexp(g.logw, -1) for g in self._grids(batch)], -1)

    # ---------------------------------------------------------------- predictive
    def _terms(self, batch: TaskBatch):
        """Per family: normalised log weights ``[T, 1, G]``, coefficient moments, features at targets."""
        grids = self._pruned_grids(batch)
        log_z = torch.logsumexp(torch.cat([g.logw for g in grids], -1), -1)
        xt = batch.target_x[..., 0].to(torch.float64)
        for g in grids:
            lo, hi = g.family.coef_range
            s = g.family.feature(xt, g.theta)  # [T, Nt, G]
            o = g.family.offset(xt, g.theta) if g.family.offset is not None else torch.zeros_like(s)
            yield g, (g.logw - log_z[:, None])[:, None, :], s, o, lo, hi

    def predict(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Predictive ``mean [T, Nt, 1]`` and ``var [T, Nt, 1]`` (observation noise included)."""
        means, variances = [], []
        for sub in self._chunks(batch):
            parts = []
            for g, logw, s, o, lo, hi in self._terms(sub):
                w = logw.exp()
                c1, cvar = truncnorm_moments(g.mu, g.tau, lo, hi)
                parts.append((w, c1[:, None] * s + o, cvar[:, None] * s**2))
            mean = sum((w * mg).sum(-1) for w, mg, _ in parts)
            var = sum((w * (vg + (mg - mean[..., None]) ** 2)).sum(-1) for w, mg, vg in parts) + self.noise_std**2
            means.append(mean)
            variances.append(var)
        dtype = batch.target_x.dtype
        return torch.cat(means)[..., None].to(dtype), torch.cat(variances)[..., None].to(dtype)

    def log_prob(self, batch: TaskBatch) -> torch.Tensor:
        """Per-point log predictive density ``log p(y*_n | x*_n, context)``, ``[T, Nt]``; padded points 0."""
        _check_regression(batch, need_y=True)
        sig2 = self.noise_std**2
        out = []
        for sub in self._chunks(batch):
            yt = sub.target_y[..., 0].to(torch.float64)[..., None]  # [T, Nt, 1]
            terms = []
            for g, logw, s, o, lo, hi in self._terms(sub):
                mu, tau = g.mu[:, None], g.tau[:, None]  # [T, 1, G]
                r = yt - o
                v = s**2 * tau**2 + sig2
                log_n = -0.5 * ((r - mu * s) ** 2 / v + v.log() + _LOG_2PI)
                tau_p2 = 1 / (1 / tau**2 + s**2 / sig2)
                mu_p = tau_p2 * (mu / tau**2 + s * r / sig2)
                tau_p = tau_p2.sqrt()
                log_zp = log_diff_ndtr_fast((lo - mu_p) / tau_p, (hi - mu_p) / tau_p)
                log_z = log_diff_ndtr((lo - mu) / tau, (hi - mu) / tau)
                terms.append(logw + log_n + log_zp - log_z)
            out.append(torch.logsumexp(torch.cat(terms, -1), -1))
        lp = torch.cat(out).masked_fill(~batch.target_mask, 0.0)
        return lp.to(batch.target_x.dtype)

    def sample(self, batch: TaskBatch, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Joint draws ``[S, T, Nt, 1]``: per draw and task one ``(theta, c)`` from the posterior, then noise."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        grids = self._grids(batch)
        S = num_samples
        logw = torch.cat([g.logw for g in grids], -1)
        idx = torch.multinomial(torch.softmax(logw, -1), S, replacement=True, generator=generator)  # [T, S]
        xt = batch.target_x[..., 0].to(torch.float64)
        T, Nt = xt.shape
        y = torch.zeros(T, Nt, S, dtype=torch.float64)
        start = 0
        for g in grids:
            G = g.theta.shape[1]
            local = (idx - start).clamp(0, G - 1)
            use = (idx >= start) & (idx < start + G)  # [T, S]
            start += G
            th, mu, tau = (torch.gather(t, 1, local) for t in (g.theta, g.mu, g.tau))
            lo, hi = g.family.coef_range
            c = truncnorm_sample(mu, tau, lo, hi, generator)
            f = c[:, None, :] * g.family.feature(xt, th)
            if g.family.offset is not None:
                f = f + g.family.offset(xt, th)
            y = torch.where(use[:, None, :], f, y)
        y = y + self.noise_std * torch.randn(y.shape, generator=generator, dtype=y.dtype)
        y = y * batch.target_mask[..., None]
        return y.permute(2, 0, 1)[..., None].to(batch.target_x.dtype)


class SinusoidOracle(_GridOracle):
    """Bayes-optimal predictive for noisy sinusoids ``y = A sin(x - phase) + N(0, noise_std^2)``.

    ``p(y* | x*, C) = int N(y* | A sin(x* - phase), noise_std^2) p(A, phase | C) dA dphase`` under the
    task family's uniform prior on ``A`` and ``phase`` and its ``noise_std`` (which must be > 0).
    Given the phase the model is linear in ``A``, so ``A`` is integrated in closed form (truncated
    Gaussians) and the phase by an adaptive midpoint rule: ``num_grid`` cells over the phase range,
    or ``num_fine`` points spread over the cells that carry mass when the posterior is narrow. Exact
    up to that quadrature, which is accurate while the posterior of the phase is resolved by a few
    points per standard deviation and the noise is not tiny (raise ``num_grid`` for
    ``noise_std`` well below 0.05).

    Parameters
    ----------
    tasks : Sinusoid
        The task family (its ``amplitude_range``, ``phase_range`` and ``noise_std``).
    num_grid, num_fine : int
        Quadrature settings (see above), defaults 512 and 256.
    """

    def __init__(self, tasks: Sinusoid, num_grid: int = 512, num_fine: int = 256) -> None:
        if not isinstance(tasks, Sinusoid):
            raise TypeError(f"tasks must be a Sinusoid task distribution, got {type(tasks).__name__}")
        self.tasks = tasks
        super().__init__([_sine_family(tasks)], [0.0], tasks.noise_std, num_grid, num_fine)

    def __repr__(self) -> str:
        return f"SinusoidOracle({self.tasks!r})"


class LineOrSineOracle(_GridOracle):
    """Bayes-optimal predictive for :class:`pyro_meta.data.LineOrSine`.

    ``p(y* | x*, C) = P(sine | C) p(y* | x*, C, sine) + P(line | C) p(y* | x*, C, line)``, with the
    family's prior ``sine_prob``; within the sine hypothesis as :class:`SinusoidOracle`, within the
    line hypothesis the slope on an adaptive grid and the intercept in closed form. With one or two
    context points the predictive is typically multimodal.

    Parameters
    ----------
    tasks : LineOrSine
        The task family (its ranges, ``sine_prob`` and ``noise_std``, which must be > 0).
    """

    def __init__(self, tasks: LineOrSine, num_grid: int = 512, num_fine: int = 256) -> None:
        if not isinstance(tasks, LineOrSine):
            raise TypeError(f"tasks must be a LineOrSine task distribution, got {type(tasks).__name__}")
        self.tasks = tasks
        p = tasks.sine_prob
        log_prior = [math.log(p) if p > 0 else -math.inf, math.log1p(-p) if p < 1 else -math.inf]
        super().__init__([_sine_family(tasks), _line_family(tasks)], log_prior, tasks.noise_std, num_grid, num_fine)

    def sine_probability(self, batch: TaskBatch) -> torch.Tensor:
        """Posterior probability that each task is a sinusoid, ``P(sine | context)``, ``[T]``."""
        return torch.softmax(self.family_log_evidence(batch), -1)[:, 0].to(batch.context_x.dtype)

    def __repr__(self) -> str:
        return f"LineOrSineOracle({self.tasks!r})"
