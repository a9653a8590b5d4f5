"""``BayesianLastLayer``: a meta-learned feature extractor with a Bayesian linear head per task.

Model (``T`` tasks, features ``h(x) [F]`` of a shared extractor, ``a(x) = [h(x), 1]``; ``R`` head rows:
``K`` classes for "categorical", 1 for "bernoulli", ``Dy`` outputs for "normal")::

    w_t ~ N(mu, diag(s^2))                          # task latent "w", [T, 1, R, F+1]
    y_tn ~ Categorical(softmax(W_t a(x_tn)))        # likelihood="categorical": long labels [T, N]
    y_tn ~ Bernoulli(sigmoid(w_t . a(x_tn)))        # likelihood="bernoulli": labels 0/1 [T, N]
    y_tn ~ N(W_t a(x_tn), noise^2 I)                # likelihood="normal": [T, N, Dy]

For class labels the prior is shared by the rows (``mu, s [F+1]``: labels are exchangeable, so one model
serves any number of classes; ``K`` is ``num_classes`` or each batch's way); for regression each output
row has its own (``[Dy, F+1]``). The extractor, ``mu``, ``s`` (and the noise) are global, meta-learned;
the task latent has ``R (F+1)`` coordinates (e.g. 5 x 17 = 85 with ``feature_dim=16``), small enough
for ``infer(method="nuts")`` to sample the exact posterior of the same model.

Guide, conditioned on the context set only (also while meta-training; a valid ELBO of every observed
point whose guide is the one used at test time):

* class labels -- amortized, VERSA-like (Gordon et al. 2019): each class's context features are averaged,
  ``e_tk``, and an MLP plus a linear skip maps ``[e_tk, ||e_tk||^2, log(1 + n_tk)]`` to
  ``q(w_tk) = N(mu + m(e_tk), diag(s_tk^2))`` (:class:`~pyro_meta.models._features.ClassGaussianEncoder`;
  for "bernoulli" the one row sees both classes' means). For "categorical" it starts at the prototype
  classifier ``m = [2 e_tk, -||e_tk||^2]`` (a ProtoNet head) with scales ``0.1 prior_scale``;
* "normal" -- the exact conditional posterior, Gaussian-conjugate given the features:
  ``P_r = diag(s_r^-2) + A^T A / noise^2``, ``m_r = P_r^-1 (mu_r / s_r^2 + A^T y_r / noise^2)``
  (:meth:`BayesianLastLayer.exact_posterior`), so NUTS over ``w`` is tested against a closed form, and
  on line-or-sine the model is an exact-posterior reference for the gradient-based family.

Meta-objective (:meth:`BayesianLastLayer.loss`): the negative ELBO per task,
``kl_weight KL(q(w_t | C_t) || p(w)) - E_q log p(y_{C+T} | x, w_t)``, with reparameterised draws and the KL in
closed form (with ``kl_weight = 1``, the default, equal to ``-TraceMeanField_ELBO / T`` of ``model``/``guide``,
checked in the tests), written without a Pyro trace for speed. ``kl_weight < 1`` tempers the KL: each class's
head weights cost ``F + 1`` coordinates of KL, which a few labelled points cannot pay for at full weight (the
ELBO then trades accuracy for a broad posterior); the tempered objective trains the same model (features and
prior; the prior still moment-matches the guide's posteriors), its guide is then sharper than the model's exact
posterior, which ``method="nuts"`` samples; with ``temper_likelihood=True`` the model's likelihood is raised to
``1 / kl_weight`` and NUTS samples the cold posterior ``p(w) p(y | w)^(1 / kl_weight)`` that the tempered ELBO's
optimum over all ``q`` is (the ELBO divided by ``kl_weight`` is the ELBO of that model).

``objective="versa"`` replaces the ELBO by VERSA's amortized predictive objective (ML-PIP, Gordon et al. 2019),
``-mean_{n in target} log (1/L) sum_l p(y_tn | x_tn, w_l)``, ``w_l ~ q(w_t | C_t)``: it trains the predictive that
``infer(method="amortized")`` scores, a proper scoring rule of it, but gives the prior scale ``s`` no gradient
(``mu`` is still learned through the guide's location), so ``method="nuts"`` then samples the posterior under
the initial ``prior_scale``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_meta.data.batch import SPLITS, TaskBatch
from pyro_meta.likelihoods import check_likelihood, likelihood_from_outputs
from pyro_meta.model import MetaModel, check_batch, observe, task_plate

from ._features import (
    ClassGaussianEncoder,
    FeatureExtractor,
    check_versa_targets,
    class_means,
    encode_sets,
    infer_num_classes,
    versa_loss,
)

__all__ = ["BayesianLastLayer"]

OBJECTIVES = ("elbo", "versa")


class BayesianLastLayer(MetaModel):
    """Shared features, per-task Bayesian linear head ``w_t ~ N(mu, diag(s^2))``; Categorical, Bernoulli or Normal.

    Parameters
    ----------
    backbone : "conv4" | "mlp"
        Shared extractor: Conv-4 on flattened images (``image_shape``) or an MLP on ``x [T, N, x_dim]``.
    image_shape, x_dim, channels, hidden :
        Extractor options (see :class:`~pyro_meta.models._features.FeatureExtractor`).
    feature_dim : int, optional
        ``F``: the extractor's output is projected linearly to ``F`` features (keeps the task latent small);
        None keeps the backbone's size.
    test_shifts : int
        Eval-mode features averaged over translations of up to this many pixels (``"conv4"``; see
        :class:`~pyro_meta.models._features.FeatureExtractor`); 0: none.
    likelihood : "categorical" | "bernoulli" | "normal"
    num_classes : int, optional
        ``K`` for "categorical" (default: each batch's way).
    y_dim : int
        ``Dy`` for "normal".
    noise_std, learn_noise :
        Observation noise of "normal" (meta-learned unless ``learn_noise=False``).
    prior_scale : float
        Initial prior scale ``s``.
    guide_hidden : int
        Width of the amortized guide's MLP (class labels).
    num_particles : int
        Reparameterised draws of ``w_t`` per task in :meth:`loss`.
    kl_weight : float
        Weight of the KL term in :meth:`loss` (1: the ELBO; "elbo" objective only).
    objective : "elbo" | "versa"
        Meta-training loss (module docstring): the (tempered) negative ELBO, or VERSA's predictive loss.
    temper_likelihood : bool
        The model's likelihood raised to ``1 / kl_weight``: ``p(w) prod_n p(y_n | x_n, w)^(1 / kl_weight)``, the
        cold posterior that the tempered ELBO's optimum over all ``q`` is, so that ``method="nuts"`` samples
        what the amortized guide approximates (False: the model's own posterior; :meth:`loss` and the
        predictive of a new point are the same either way). Class labels and ``kl_weight > 0`` only.
    """

    def __init__(
        self,
        backbone: str = "conv4",
        image_shape: Optional[Sequence[int]] = (1, 28, 28),
        x_dim: Optional[int] = None,
        channels: int = 64,
        hidden: Union[int, Sequence[int]] = (64, 64),
        feature_dim: Optional[int] = 16,
        test_shifts: int = 0,
        likelihood: str = "categorical",
        num_classes: Optional[int] = None,
        y_dim: int = 1,
        noise_std: float = 0.1,
        learn_noise: bool = True,
        prior_scale: float = 1.0,
        guide_hidden: int = 64,
        num_particles: int = 1,
        kl_weight: float = 1.0,
        objective: str = "elbo",
        temper_likelihood: bool = False,
    ) -> None:
        super().__init__()
        self.likelihood = check_likelihood(likelihood)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        for name, value in (("y_dim", y_dim), ("num_particles", num_particles), ("guide_hidden", guide_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise ValueError(f"num_classes must be an int >= 2 or None (each batch's way), got {num_classes!r}")
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or kl_weight < 0:
            raise ValueError(f"kl_weight must be a non-negative number, got {kl_weight!r}")
        self.kl_weight = float(kl_weight)
        if not isinstance(temper_likelihood, bool):
            raise TypeError(f"temper_likelihood must be a bool, got {temper_likelihood!r}")
        if temper_likelihood and (likelihood == "normal" or objective != "elbo" or not kl_weight > 0):
            raise ValueError(
                "temper_likelihood=True needs class labels, objective='elbo' and kl_weight > 0 (the 'normal' guide is "
                f"the exact untempered posterior); got likelihood={likelihood!r}, objective={objective!r}, "
                f"kl_weight={kl_weight!r}"
            )
        self.temper_likelihood = temper_likelihood
        for name, value in (("noise_std", noise_std), ("prior_scale", prior_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.features = FeatureExtractor(
            backbone,
            image_shape=image_shape if backbone == "conv4" else None,
            x_dim=x_dim,
            channels=channels,
            hidden=hidden,
            feature_dim=feature_dim,
            test_shifts=test_shifts,
        )
        F = self.features.feature_dim
        self.feature_dim = F
        self.num_classes = num_classes if likelihood == "categorical" else (2 if likelihood == "bernoulli" else None)
        self.y_dim = y_dim if likelihood == "normal" else 1
        self.num_particles = num_particles
        rows = (self.y_dim,) if likelihood == "normal" else ()
        self.prior_loc = nn.Parameter(torch.zeros(rows + (F + 1,)))
        self.prior_log_scale = nn.Parameter(torch.full(rows + (F + 1,), math.log(float(prior_scale))))
        log_noise = torch.tensor(math.log(float(noise_std)))
        if likelihood == "normal" and learn_noise:
            self.log_noise = nn.Parameter(log_noise)
        else:
            self.register_buffer("log_noise", log_noise)
        self.encoder = None
        if likelihood != "normal":
            in_dim = F if likelihood == "categorical" else 2 * F + 1
            self.encoder = ClassGaussianEncoder(
                in_dim,
                F + 1,
                hidden=guide_hidden,
                prototype_init=likelihood == "categorical",
                init_scale=0.1 * float(prior_scale),
            )

    # ------------------------------------------------------------------ pieces
    @property
    def noise_std(self) -> torch.Tensor:
        return self.log_noise.exp()

    def check(self, batch: TaskBatch) -> int:
        """Head rows ``R`` of this batch (``K``, 1 or ``Dy``); errors for a batch that does not fit the model."""
        check_batch(batch)
        name = type(self).__name__
        if (self.likelihood == "normal") == batch.is_classification:
            want = "real-valued y [T, N, Dy]" if self.likelihood == "normal" else "long class labels [T, N]"
            raise ValueError(f"{name}(likelihood={self.likelihood!r}) takes {want}")
        if batch.x_dim != self.features.in_features:
            raise ValueError(
                f"batch has Dx={batch.x_dim} but {name} was built for inputs of size "
                f"{self.features.in_features} (x_dim / image_shape)"
            )
        if self.likelihood == "normal":
            if batch.y_dim != self.y_dim:
                raise ValueError(f"batch has Dy={batch.y_dim} but {name} was built for y_dim={self.y_dim}")
            return self.y_dim
        K = infer_num_classes(self.num_classes, batch) if self.likelihood == "categorical" else 2
        for split in SPLITS:
            y = batch.y(split)
            if y is not None and batch.num_points(split) and bool((y[batch.mask(split)] >= K).any()):
                raise ValueError(f"batch {split}_y has labels >= {K} ({name}, likelihood={self.likelihood!r})")
        return K if self.likelihood == "categorical" else 1

    def augmented(self, h: torch.Tensor) -> torch.Tensor:
        """``a(x) = [h(x), 1]``: ``[T, N, F] -> [T, N, F+1]``."""
        return torch.cat([h, torch.ones_like(h[..., :1])], -1)

    def encode_batch(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(a_context [T, Nc, F+1], a_target [T, Nt, F+1])`` (one extractor pass while training)."""
        hc, ht = encode_sets(self.features, batch)
        return self.augmented(hc), self.augmented(ht)

    def prior_params(self, R: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mu, s)`` of the prior, each ``[R, F+1]``."""
        shape = (R, self.feature_dim + 1)
        return self.prior_loc.expand(shape), self.prior_log_scale.exp().expand(shape)

    def outputs(self, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``W_t a(x)``: ``a [T, N, F+1]``, ``w [..., T, R, F+1]`` -> ``[..., T, N, R]``."""
        return a @ w.transpose(-1, -2)

    def likelihood_dist(self, out: torch.Tensor) -> dist.Distribution:
        return likelihood_from_outputs(self.likelihood, out, self.noise_std)

    # ------------------------------------------------------------------ Pyro
    def model(self, batch: TaskBatch) -> None:
        """``w_t ~ N(mu, diag(s^2))`` ([T, 1, R, F+1]); ``y ~ p(y | W_t [h(x), 1])`` (labels [T, N] or [T, N, Dy]),
        its log density times ``1 / kl_weight`` with ``temper_likelihood``."""
        R = self.check(batch)
        a = dict(zip(SPLITS, self.encode_batch(batch)))
        loc, scale = self.prior_params(R)
        power = 1.0 / self.kl_weight if self.temper_likelihood else 1.0
        with task_plate(batch):
            w = pyro.sample("w", dist.Normal(loc, scale).to_event(2)).squeeze(-3)  # [..., T, R, F+1]
            with poutine.scale(scale=power):
                for split in SPLITS:
                    observe(batch, lambda x, s=split: self.likelihood_dist(self.outputs(a[s], w)), splits=(split,))

    def posterior_params(
        self, batch: TaskBatch, a_context: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The guide's ``(loc [T, R, F+1], scale)`` given the context; for "normal" the scale is a Cholesky
        factor ``[T, R, F+1, F+1]`` of the exact conditional posterior, else a diagonal scale ``[T, R, F+1]``."""
        R = self.check(batch)
        if a_context is None:
            a_context = self.augmented(self.features(batch.context_x, batch.context_mask))
        if self.likelihood == "normal":
            mean, cov = self._conjugate(a_context, batch.context_y, batch.context_mask)
            return mean, torch.linalg.cholesky(cov)
        h = a_context[..., :-1]
        K = 2 if self.likelihood == "bernoulli" else R
        means, counts = class_means(h, batch.context_y, batch.context_mask, K)  # [T, K, F], [T, K]
        if self.likelihood == "bernoulli":  # one row, summarising both classes
            means = torch.cat([means[..., 0, :], means[..., 1, :], torch.log1p(counts[..., :1])], -1)[..., None, :]
            counts = counts[..., 1:]
        loc0, _ = self.prior_params(R)
        return self.encoder(means, counts, loc0)

    def _conjugate(self, a: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exact ``p(w_r | context)`` for "normal": ``(mean [T, Dy, F+1], cov [T, Dy, F+1, F+1])``."""
        a = a * mask[..., None].to(a.dtype)  # padded points drop out
        loc, scale = self.prior_params(self.y_dim)  # [Dy, F+1]
        noise2 = self.noise_std**2
        prec = torch.diag_embed(scale.pow(-2)) + (a.transpose(-1, -2) @ a)[:, None] / noise2  # [T, Dy, F+1, F+1]
        b = loc / scale**2 + (a.transpose(-1, -2) @ (y * mask[..., None].to(y.dtype))).transpose(-1, -2) / noise2
        cov = torch.cholesky_inverse(torch.linalg.cholesky(prec))
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        return (cov @ b[..., None])[..., 0], cov

    def guide(self, batch: TaskBatch) -> None:
        """``q(w_t | context_t)``: amortized per-class Gaussians (class labels), the exact posterior ("normal")."""
        loc, scale = self.posterior_params(batch)
        with task_plate(batch):
            if self.likelihood == "normal":
                q = dist.MultivariateNormal(loc.unsqueeze(-3), scale_tril=scale.unsqueeze(-4)).to_event(1)
            else:
                q = dist.Normal(loc.unsqueeze(-3), scale.unsqueeze(-3)).to_event(2)
            pyro.sample("w", q)

    @torch.no_grad()
    def exact_posterior(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Closed-form ``p(w_t | context_t)`` of the "normal" model: ``(mean [T, Dy, F+1], cov [T, Dy, F+1, F+1])``."""
        if self.likelihood != "normal":
            raise ValueError("exact_posterior: only the Gaussian likelihood (likelihood='normal') is conjugate")
        self.check(batch)
        a = self.augmented(self.features(batch.context_x, batch.context_mask))
        return self._conjugate(a, batch.context_y, batch.context_mask)

    # ------------------------------------------------------------------ meta-objective
    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """Negative ELBO per task, ``mean_t [kl_weight KL(q(w_t | C_t) || p(w)) - E_q log p(y_{C+T} | x, w_t)]``.

        ``num_particles`` reparameterised draws of ``w_t``; the KL in closed form. Equal in expectation to
        ``TraceMeanField_ELBO().differentiable_loss(model, guide, batch) / T``. With ``objective="versa"``:
        ``mean_t -mean_{n in target} log (1/L) sum_l p(y_tn | x_tn, w_l)`` over ``L = num_particles`` draws.
        """
        R = self.check(batch)
        ac, at = self.encode_batch(batch)
        loc, scale = self.posterior_params(batch, ac)
        p_loc, p_scale = self.prior_params(R)
        S = self.num_particles
        if self.likelihood == "normal":
            eps = torch.randn((S,) + tuple(loc.shape), dtype=loc.dtype, device=loc.device)
            w = loc + (scale @ eps[..., None])[..., 0]  # [S, T, R, F+1]
        else:
            w = loc + scale * torch.randn((S,) + tuple(loc.shape), dtype=loc.dtype, device=loc.device)
        if self.objective == "versa":  # no KL: the predictive's log score only
            check_versa_targets(batch)
            return versa_loss(self.likelihood_dist(self.outputs(at, w)).log_prob(batch.target_y), batch)
        if self.likelihood == "normal":
            kl = _kl_mvn_diag(loc, scale, p_loc, p_scale).sum(-1)  # [T]
        else:
            kl = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(p_loc, p_scale)).sum((-1, -2))
        log_lik = 0.0
        for split, a in (("context", ac), ("target", at)):
            y = batch.y(split)
            if y is None or batch.num_points(split) == 0:
                continue
            lp = self.likelihood_dist(self.outputs(a, w)).log_prob(y)  # [S, T, N]
            log_lik = log_lik + (lp * batch.mask(split).to(lp.dtype)).sum(-1).mean(0)
        return (self.kl_weight * kl - log_lik).mean()

    def extra_repr(self) -> str:
        return (
            f"feature_dim={self.feature_dim}, likelihood={self.likelihood!r}, num_classes={self.num_classes}, "
            f"objective={self.objective!r}"
        )


def _kl_mvn_diag(loc: torch.Tensor, tril: torch.Tensor, p_loc: torch.Tensor, p_scale: torch.Tensor) -> torch.Tensor:
    """``KL(N(loc, L L^T) || N(p_loc, diag(p_scale^2)))`` over the last dim: ``[..., d]``, ``[..., d, d]`` -> ``[...]``."""
    d = loc.shape[-1]
    var = p_scale**2
    trace = (tril.pow(2).sum(-1) / var).sum(-1)
    maha = ((p_loc - loc) ** 2 / var).sum(-1)
    logdet_q = 2 * torch.log(torch.diagonal(tril, dim1=-2, dim2=-1)).sum(-1)
    logdet_p = torch.log(var).sum(-1)
    return 0.5 * (trace + maha - d + logdet_p - logdet_q)
