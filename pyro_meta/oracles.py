"""Oracles: the best predictive any meta-learner could reach on a task family.

Each oracle knows the task family's true generative process and returns the Bayes-optimal
posterior predictive ``p(y* | x*, context)`` at a batch's targets (context points are masked):

- :class:`GPOracle`: the exact GP predictive with each task's true hyperparameters (``GPCurves``).
- :class:`SinusoidOracle`: noisy sinusoids (``Sinusoid`` with ``noise_std > 0``), by numerical
  integration over (amplitude, phase).
- :class:`LineOrSineOracle`: ``LineOrSine``, integrating over both hypotheses and their parameters.

All computation is in float64; results come back in the batch's dtype.
"""

from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.special import log_ndtr, ndtr, ndtri

from .data.batch import TaskBatch
from .data.gp import kernel_matrix
from .data.line_or_sine import LineOrSine
from .data.tasks import Sinusoid

__all__ = ["GPOracle", "LineOrSineOracle", "SinusoidOracle"]

_LOG_2PI = math.log(2 * math.pi)


def _check_regression(batch: TaskBatch, need_y: bool) -> None:
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"batch must be a TaskBatch, got {type(batch).__name__}")
    if batch.is_classification or batch.y_dim != 1:
        raise ValueError(f"batch must be scalar regression (context_y [T, Nc, 1]), got {tuple(batch.context_y.shape)}")
    if need_y and batch.target_y is None:
        raise ValueError("batch.target_y [T, Nt, 1] is required (the batch has target_y=None)")


# --------------------------------------------------------------------------------------------- GP
class GPOracle:
    """Exact GP posterior predictive with each task's true hyperparameters.

    ``mean = k_*c (K_cc + s_n^2 I)^-1 y_c`` and ``cov = K_** + s_n^2 I - k_*c (K_cc + s_n^2 I)^-1 k_c*``
    over the real context points; the predictive includes the observation noise ``s_n^2``.
    Hyperparameters come from ``batch.info`` (``kernel``, ``lengthscale``, ``signal_scale``,
    ``period``, ``noise_std``), as :class:`pyro_meta.data.GPCurves` writes them; the prior mean is 0.

    Parameters
    ----------
    jitter : float
        Added to the diagonal of the context covariance before its Cholesky factorisation.
    """

    def __init__(self, jitter: float = 1e-10) -> None:
        self.jitter = float(jitter)

    def _posterior(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Predictive ``mean [T, Nt]`` and ``cov [T, Nt, Nt]`` (float64; padded rows/cols are 0)."""
        _check_regression(batch, need_y=False)
        info = batch.info
        missing = [k for k in ("kernel", "lengthscale", "signal_scale", "noise_std") if k not in info]
        if missing:
            raise ValueError(f"batch.info lacks the GP hyperparameters {missing} (GPCurves writes them)")
        kernel = info["kernel"]
        T = batch.num_tasks
        d = torch.float64

        def hyper(name):
            v = torch.as_tensor(info[name], dtype=d)
            return v.expand(T) if v.dim() == 0 else v

        ell, s, noise = hyper("lengthscale"), hyper("signal_scale"), hyper("noise_std")
        period = hyper("period") if "period" in info else None
        cx, tx = batch.context_x.to(d), batch.target_x.to(d)
        cm, tm = batch.context_mask, batch.target_mask
        Nc, Nt = cx.shape[1], tx.shape[1]
        yc = batch.context_y[..., 0].to(d) * cm
        eye_c = torch.eye(Nc, dtype=d)
        Kcc = kernel_matrix(kernel, cx, cx, ell, s, period) + (noise[:, None, None] ** 2 + self.jitter) * eye_c
        pair = cm[:, :, None] & cm[:, None, :]
        Kcc = torch.where(pair, Kcc, eye_c.expand_as(Kcc))  # padded context: an independent unit block
        Kct = kernel_matrix(kernel, cx, tx, ell, s, period) * cm[:, :, None]
        Ktt = kernel_matrix(kernel, tx, tx, ell, s, period) + noise[:, None, None] ** 2 * torch.eye(Nt, dtype=d)
        L = torch.linalg.cholesky(Kcc)
        A = torch.linalg.solve_triangular(L, Kct, upper=False)  # [T, Nc, Nt]
        b = torch.linalg.solve_triangular(L, yc[..., None], upper=False)  # [T, Nc, 1]
        mean = (A.transpose(1, 2) @ b)[..., 0]
        cov = Ktt - A.transpose(1, 2) @ A
        tpair = tm[:, :, None] & tm[:, None, :]
        return mean * tm, cov * tpair

    def predict(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Predictive ``mean [T, Nt, 1]`` and variance ``var [T, Nt, 1]`` (noise included; padded: 0, 1)."""
        mean, cov = self._posterior(batch)
        var = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-12).masked_fill(~batch.target_mask, 1.0)
        dtype = batch.target_x.dtype
        return mean[..., None].to(dtype), var[..., None].to(dtype)

    def log_prob(self, batch: TaskBatch) -> torch.Tensor:
        """Per-point log predictive density ``log N(y*_n | mean_n, var_n)``, ``[T, Nt]``; padded points 0."""
        _check_regression(batch, need_y=True)
        mean, cov = self._posterior(batch)
        var = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-12).masked_fill(~batch.target_mask, 1.0)
        y = batch.target_y[..., 0].to(torch.float64)
        lp = -0.5 * ((y - mean) ** 2 / var + var.log() + _LOG_2PI)
        return lp.masked_fill(~batch.target_mask, 0.0).to(batch.target_x.dtype)

    def joint_log_prob(self, batch: TaskBatch) -> torch.Tensor:
        """Joint log predictive density of each task's real targets ``log N(y* | mean, cov)``, ``[T]``."""
        _check_regression(batch, need_y=True)
        mean, cov, tm = *self._posterior(batch), batch.target_mask
        Nt = tm.shape[1]
        cov = torch.where(tm[:, :, None] & tm[:, None, :], cov, torch.eye(Nt, dtype=cov.dtype).expand_as(cov))
        resid = (batch.target_y[..., 0].to(torch.float64) - mean) * tm
        L = torch.linalg.cholesky(cov + self.jitter * torch.eye(Nt, dtype=cov.dtype))
        z = torch.linalg.solve_triangular(L, resid[..., None], upper=False)[..., 0]
        logdet = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)  # padded diagonal entries are 1
        n = tm.sum(-1)
        return (-0.5 * (z.pow(2).sum(-1) + logdet + n * _LOG_2PI)).to(batch.target_x.dtype)

    def sample(self, batch: TaskBatch, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Joint draws of the targets from the predictive, ``[S, T, Nt, 1]`` (padded points 0)."""
        mean, cov, tm = *self._posterior(batch), batch.target_mask
        Nt = tm.shape[1]
        cov = torch.where(tm[:, :, None] & tm[:, None, :], cov, torch.eye(Nt, dtype=cov.dtype).expand_as(cov))
        L = torch.linalg.cholesky(cov + self.jitter * torch.eye(Nt, dtype=cov.dtype))
        eps = torch.randn((num_samples,) + tuple(mean.shape) + (1,), generator=generator, dtype=cov.dtype)
        y = (mean[..., None] + L @ eps)[..., 0] * tm
        return y[..., None].to(batch.target_x.dtype)


# ------------------------------------------------------------------------------- grid families
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


def _log_diff_ndtr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(Phi(b) - Phi(a))`` for ``a <= b``, stable in both tails."""
    flip = a > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = log_ndtr(a), log_ndtr(b)
    return lb + torch.log1p(-torch.exp((la - lb).clamp_max(0.0)).clamp_max(1 - 1e-16))


def _log_diff_ndtr_fast(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """As :func:`_log_diff_ndtr` via ``ndtr`` (faster); falls back to it where ``ndtr`` underflows."""
    flip = a > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    out = torch.log(ndtr(b) - ndtr(a))
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        out[bad] = _log_diff_ndtr(a[bad], b[bad])
    return out


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
            + torch.log(tau) + 0.5 * _LOG_2PI
            + _log_diff_ndtr((lo - mu) / tau, (hi - mu) / tau)
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
                c1, cvar = _truncnorm_moments(g.mu, g.tau, lo, hi)
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
                log_zp = _log_diff_ndtr_fast((lo - mu_p) / tau_p, (hi - mu_p) / tau_p)
                log_z = _log_diff_ndtr((lo - mu) / tau, (hi - mu) / tau)
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
            c = _truncnorm_sample(mu, tau, lo, hi, generator)
            f = c[:, None, :] * g.family.feature(xt, th)
            if g.family.offset is not None:
                f = f + g.family.offset(xt, th)
            y = torch.where(use[:, None, :], f, y)
        y = y + self.noise_std * torch.randn(y.shape, generator=generator, dtype=y.dtype)
        y = y * batch.target_mask[..., None]
        return y.permute(2, 0, 1)[..., None].to(batch.target_x.dtype)


_GL_NODES, _GL_WEIGHTS = (torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(12))


def _truncnorm_moments(mu, tau, lo, hi):
    """Mean and variance of ``N(mu, tau^2)`` truncated to ``[lo, hi]`` (elementwise).

    Closed form, except where the density is nearly flat over the interval (the closed form then
    cancels catastrophically): there a 12-point Gauss-Legendre rule on ``[lo, hi]`` is exact to
    rounding.
    """
    a, b = (lo - mu) / tau, (hi - mu) / tau
    log_z = _log_diff_ndtr(a, b)
    pa = torch.exp(-0.5 * a**2 - 0.5 * _LOG_2PI - log_z)
    pb = torch.exp(-0.5 * b**2 - 0.5 * _LOG_2PI - log_z)
    mean = mu + tau * (pa - pb)
    var = tau**2 * (1 + a * pa - b * pb - (pa - pb) ** 2)
    flat = (b - a) * (torch.maximum(a.abs(), b.abs()) + (b - a)) < 1  # log-density varies by < 1 nat
    if bool(flat.any()):
        c = 0.5 * (lo + hi) + 0.5 * (hi - lo) * _GL_NODES.to(mu.dtype)  # [K]
        logf = -0.5 * ((c - mu[flat][:, None]) / tau[flat][:, None]) ** 2
        w = _GL_WEIGHTS.to(mu.dtype) * torch.exp(logf - logf.max(-1, keepdim=True).values)
        w = w / w.sum(-1, keepdim=True)
        m1 = (w * c).sum(-1)
        mean[flat] = m1
        var[flat] = (w * (c - m1[:, None]) ** 2).sum(-1)
    return mean.clamp(lo, hi), var.clamp(0.0, (hi - lo) ** 2 / 4)


def _truncnorm_sample(mu, tau, lo, hi, generator):
    """Inverse-CDF draws from ``N(mu, tau^2)`` truncated to ``[lo, hi]``, computed in the lower tail."""
    a, b = (lo - mu) / tau, (hi - mu) / tau
    flip = a > 0
    a2, b2 = torch.where(flip, -b, a), torch.where(flip, -a, b)
    u = torch.rand(mu.shape, generator=generator, dtype=mu.dtype)
    pa, pb = ndtr(a2), ndtr(b2)
    z = ndtri((pa + u * (pb - pa)).clamp(1e-300, 1.0))
    z = torch.where(flip, -z, z)
    return (mu + tau * z).clamp(lo, hi)


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
        super().__init__(
            [_sine_family(tasks), _line_family(tasks)], log_prior, tasks.noise_std, num_grid, num_fine
        )

    def sine_probability(self, batch: TaskBatch) -> torch.Tensor:
        """Posterior probability that each task is a sinusoid, ``P(sine | context)``, ``[T]``."""
        return torch.softmax(self.family_log_evidence(batch), -1)[:, 0].to(batch.context_x.dtype)

    def __repr__(self) -> str:
        return f"LineOrSineOracle({self.tasks!r})"
