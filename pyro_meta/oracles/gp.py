"""The exact Gaussian-process predictive with each task's true hyperparameters (``GPCurves``)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..data.batch import TaskBatch
from ..data.gp import kernel_matrix
from .base import LOG_2PI as _LOG_2PI
from .base import check_regression as _check_regression

__all__ = ["GPOracle"]


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
