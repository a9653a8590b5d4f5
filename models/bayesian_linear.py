"""``BayesianLinear``: the conjugate meta-learner whose posterior is known in closed form.

Model (per task ``t``; features ``phi(x)`` fixed, ``K`` of them)::

    w_t ~ N(mu, diag(s^2))                        # task latent, [T, 1, K]
    y_tn ~ N(phi(x_tn) . w_t, noise_std^2)       # context and target points

``mu`` and ``s`` are meta-learned (type-II maximum likelihood through the ELBO). The posterior
given a context set is Gaussian: ``Sigma = (diag(s^-2) + Phi^T Phi / sigma^2)^-1``,
``m = Sigma (mu / s^2 + Phi^T y / sigma^2)`` (:meth:`BayesianLinear.exact_posterior`), the
ground truth against which every inference method is tested.
"""

from __future__ import annotations

from typing import Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_meta.data.batch import TaskBatch
from pyro_meta.data.features import FourierFeatures, PolynomialFeatures
from pyro_meta.model import MetaModel, check_batch, observe, task_plate

__all__ = ["BayesianLinear"]


def _make_features(features: Union[str, nn.Module], degree: int, num_features: int, x_dim: int) -> nn.Module:
    if isinstance(features, nn.Module):
        if not hasattr(features, "num_features"):
            raise TypeError("features must have a num_features attribute (the K of phi(x) [.., N, K])")
        return features
    if features == "polynomial":
        return PolynomialFeatures(degree)
    if features == "fourier":
        return FourierFeatures(x_dim=x_dim, num_features=num_features)
    raise ValueError(f"features must be 'polynomial', 'fourier' or an nn.Module, got {features!r}")


class BayesianLinear(MetaModel):
    """Bayesian linear regression on fixed features with a meta-learned Gaussian prior.

    Parameters
    ----------
    features : "polynomial" | "fourier" | nn.Module
        ``phi``: ``[..., N, Dx] -> [..., N, K]``. Default: cubic polynomial (``K = 4``),
        which matches :class:`pyro_meta.data.LinearTasks`' default.
    degree, num_features, x_dim : int
        Options of the built-in feature maps.
    noise_std : float
        Observation noise ``sigma`` (fixed unless ``learn_noise``).
    learn_noise : bool
        Meta-learn ``sigma`` as well.

    Notes
    -----
    The amortized guide is a linear-Gaussian encoder: it computes the conjugate update above
    from the observed points with its *own* learned ``(mu_q, s_q, sigma_q)``, so it can
    represent the exact posterior and learns to during meta-training.
    """

    def __init__(
        self,
        features: Union[str, nn.Module] = "polynomial",
        degree: int = 3,
        num_features: int = 8,
        x_dim: int = 1,
        noise_std: float = 0.3,
        learn_noise: bool = False,
    ) -> None:
        super().__init__()
        self.features = _make_features(features, degree, num_features, x_dim)
        K = self.features.num_features
        self.num_weights = K
        self.mu = nn.Parameter(torch.zeros(K))
        self.log_s = nn.Parameter(torch.zeros(K))
        log_noise = torch.tensor(float(noise_std)).log()
        if learn_noise:
            self.log_noise = nn.Parameter(log_noise)
        else:
            self.register_buffer("log_noise", log_noise)
        # guide (encoder) parameters
        self.q_mu = nn.Parameter(torch.zeros(K))
        self.q_log_s = nn.Parameter(torch.zeros(K))
        self.q_log_noise = nn.Parameter(log_noise.clone())

    @property
    def s(self) -> torch.Tensor:
        """Prior scale ``[K]``."""
        return self.log_s.exp()

    @property
    def noise_std(self) -> torch.Tensor:
        return self.log_noise.exp()

    def _mean(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # x [T, N, Dx], w [..., T, 1, K] -> [..., T, N, 1]
        return (self.features(x) * w).sum(-1, keepdim=True)

    def model(self, batch: TaskBatch) -> None:
        """``w_t ~ N(mu, diag(s^2))`` ([T, 1, K]); ``y ~ N(phi(x) w_t, sigma^2)`` ([T, N, 1])."""
        check_batch(batch)
        with task_plate(batch):
            w = pyro.sample("w", dist.Normal(self.mu, self.s).to_event(1))
            observe(batch, lambda x: dist.Normal(self._mean(x, w), self.noise_std).to_event(1))

    def _conjugate(
        self, batch: TaskBatch, mu: torch.Tensor, s: torch.Tensor, noise: torch.Tensor, observed: bool
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if observed:
            x, y, m = batch.observed()
        else:
            x, y, m = batch.context_x, batch.context_y, batch.context_mask
        if batch.y_dim != 1 or batch.is_classification:
            raise ValueError(f"BayesianLinear takes scalar regression targets y [T, N, 1], got {tuple(y.shape)}")
        phi = self.features(x) * m[..., None].to(x.dtype)  # [T, N, K]
        yv = y[..., 0] * m.to(y.dtype)
        prec = torch.diag_embed((1.0 / s**2).expand(phi.shape[0], -1)) + phi.transpose(-1, -2) @ phi / noise**2
        b = mu / s**2 + (phi.transpose(-1, -2) @ yv[..., None])[..., 0] / noise**2
        return prec, b

    def guide(self, batch: TaskBatch) -> None:
        """``q(w_t | observed) = N(P^-1 b, P^-1)`` with ``P``, ``b`` the conjugate update of the guide's parameters."""
        prec, b = self._conjugate(batch, self.q_mu, self.q_log_s.exp(), self.q_log_noise.exp(), observed=True)
        L = torch.linalg.cholesky(prec)
        mean = torch.cholesky_solve(b[..., None], L)[..., 0]
        with task_plate(batch):
            pyro.sample("w", dist.MultivariateNormal(mean[:, None, :], precision_matrix=prec[:, None]))

    @torch.no_grad()
    def exact_posterior(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Closed-form ``p(w_t | context_t)`` under the model's ``(mu, s, sigma)``: ``(mean [T, K], cov [T, K, K])``."""
        check_batch(batch)
        prec, b = self._conjugate(batch, self.mu, self.s, self.noise_std, observed=False)
        cov = torch.linalg.inv(prec)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        return (cov @ b[..., None])[..., 0], cov

    @torch.no_grad()
    def exact_predictive(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Closed-form predictive at ``target_x``: ``(mean [T, Nt, 1], sd [T, Nt, 1])``."""
        mean, cov = self.exact_posterior(batch)
        phi = self.features(batch.target_x)
        m = phi @ mean[..., None]
        var = torch.einsum("tnk,tkl,tnl->tn", phi, cov, phi)[..., None] + self.noise_std**2
        return m, var.sqrt()

    def extra_repr(self) -> str:
        return f"num_weights={self.num_weights}"
