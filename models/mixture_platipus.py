"""``MixturePLATIPUS``: PLATIPUS with a mixture over the initial weights, the MAML family's non-Gaussian member.

PLATIPUS (Finn, Xu & Levine 2018) puts a Gaussian over the pre-adaptation weights ``theta`` and
adapts a draw to the context by a gradient step: the resulting ``q(phi_t | context_t)`` is one
gradient-shifted Gaussian, so on an ambiguous task (two points on a line *and* a sine) it gives one
broad band. Here ``theta`` has ``K`` components, ``p(theta) = sum_k pi_k N(mu_k, diag(sigma_k^2))``
(with ``K = 2`` on line-or-sine, the number of families), and the amortized posterior is a mixture of
gradient-shifted, adapted Gaussians whose weights are each component's fit to the context::

    m_tk  = mu_k - gamma grad L(ctx_t; mu_k)                       (PLATIPUS's shifted mean, per component)
    r_tk  ∝ pi_k p(y_ctx | f(x_ctx; adapt(m_tk)))                  (responsibilities: how well k explains ctx)
    q(phi_t | ctx_t) = sum_k r_tk  [adapt(theta) with theta ~ N(m_tk, sigma_k^2)]

``adapt`` is ``K_inner`` gradient steps on the context MSE (step ``alpha``). Why a mixture over the
initial weights rather than a flow over ``phi``: ``phi`` has ~1,800 coordinates per task, far beyond
what a per-task flow learns from a few points, while the families of an ambiguous task correspond to
different *initialisations* that the same gradient step adapts (a line needs a different starting
network than a sine). The model is the family's hierarchical model with this mixture as the prior
over ``phi`` (``y ~ N(f_phi(x), noise^2)``), so NUTS over ``phi`` samples the same model.

Meta-objective (:meth:`MixturePLATIPUS.loss`): the target points' log predictive density under the
amortized mixture, ``-log sum_k r_tk exp(log p(y_tgt | f(x_tgt; phi_tk)))`` per target point with one
reparameterised ``phi_tk`` per component (the predictive objective of ML-PIP/VERSA, Gordon et al.
2019); it trains every component, the mixture weights, ``gamma``, ``sigma_k`` and the noise.
"""

from __future__ import annotations

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_meta.data.batch import TaskBatch
from pyro_meta.model import task_plate
from pyro_meta.nn import inner_loop
from pyro_meta.validation import check_int, check_one_of

from ._gradient_based import GradientBasedModel

__all__ = ["MixturePLATIPUS"]


class MixturePLATIPUS(GradientBasedModel):
    """PLATIPUS with a ``K``-component mixture over the initial weights (see the module docstring).

    Parameters
    ----------
    num_components : int
        ``K`` (2 for line-or-sine's two families).
    inner_lr : float
        ``alpha``, the adaptation step on the context MSE.
    shift_lr : float
        Initial ``gamma`` of the gradient shift (learned).
    prior_scale : float
        Initial ``sigma_k`` (learned).
    inner_steps, eval_inner_steps : int
        Adaptation steps at training and test time.
    responsibility : "adapted" | "prior"
        How ``r_tk`` scores component ``k`` on the context: by the network adapted to the context
        (default, PLATIPUS's choice; measured on line-or-sine: the adapted networks fit the context
        equally well, the responsibilities stay near uniform and the components do not specialise),
        or by the component's own network ``f(x; mu_k)`` (with a narrow ``sigma_k`` this approximates
        the component's marginal likelihood ``int N(phi; mu_k, sigma_k^2) p(y_ctx | phi) dphi``).
    learn_weights : bool
        Meta-learn the mixture weights ``pi_k``. Off by default (uniform): learned weights let one
        component take every task early in training and the others never specialise (measured on
        line-or-sine: responsibilities 0.24 vs 0.27 for sines vs lines after 6,000 steps).
    **kwargs
        Base network and noise options of :class:`~pyro_meta.models._gradient_based.GradientBasedModel`.
    """

    owns_theta = False

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        hidden: Sequence[int] = (40, 40),
        num_components: int = 2,
        inner_lr: float = 0.01,
        shift_lr: float = 0.01,
        prior_scale: float = 0.02,
        inner_steps: int = 1,
        eval_inner_steps: Optional[int] = None,
        first_order: bool = False,
        responsibility: str = "adapted",
        learn_weights: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(
            x_dim=x_dim,
            y_dim=y_dim,
            hidden=hidden,
            prior_scale=prior_scale,
            learn_prior_scale=False,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            first_order=first_order,
            **kwargs,
        )
        if self.likelihood != "normal" or self.adapt_mode != "all":
            raise ValueError(
                "MixturePLATIPUS supports likelihood='normal' and adapt='all' only (its mixture "
                "responsibilities use the Gaussian likelihood of the whole network)"
            )
        K = check_int("num_components", num_components)
        self.responsibility = check_one_of("responsibility", responsibility, ("prior", "adapted"))
        self.num_components = K
        self.mu = nn.Parameter(self.net.init_params(K))  # [K, P]: different initial networks
        self._register_positive("log_sigma_k", prior_scale, "prior_scale", True, shape=(K, self.num_params))
        if learn_weights:
            self.mixture_logits = nn.Parameter(torch.zeros(K))
        else:
            self.register_buffer("mixture_logits", torch.zeros(K))
        self._register_positive("log_gamma", shift_lr, "shift_lr", True)
        self._register_positive("log_inner_lr", inner_lr, "inner_lr", False)

    @property
    def theta(self) -> torch.Tensor:
        """The mixture's mean initial weights ``sum_k pi_k mu_k`` ``[P]`` (a summary; the prior is the mixture)."""
        return (self.mixture_logits.softmax(0)[:, None] * self.mu).sum(0)

    def prior(self) -> dist.Distribution:
        """``p(phi) = sum_k pi_k N(mu_k, diag(sigma_k^2))``, event ``[P]``."""
        components = dist.Normal(self.mu, self.log_sigma_k.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.mixture_logits), components)

    # ------------------------------------------------------------------ the amortized mixture
    def _adapt(
        self,
        theta: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        steps: int,
        create_graph: Optional[bool],
    ) -> torch.Tensor:
        """``steps`` gradient steps on the context MSE from ``theta [..., T, P]``."""
        return inner_loop(
            lambda p: self.mse(x, y, mask, p),
            theta,
            steps,
            self.log_inner_lr.exp(),
            first_order=self.first_order,
            create_graph=create_graph,
        )

    def components(self, batch: TaskBatch, create_graph: bool = True):
        """Per task and component: shifted means ``m [K, T, P]`` and log responsibilities ``log r [K, T]``."""
        x, y, m = batch.context_x, batch.context_y, batch.context_mask
        K, T, P = self.num_components, batch.num_tasks, self.num_params
        mu = self.mu[:, None, :].expand(K, T, P)
        g = self.task_grad(lambda p: self.mse(x, y, m, p), mu, create_graph)
        means = mu - self.log_gamma.exp() * g
        if self.responsibility == "adapted":
            scored = self._adapt(means, x, y, m, self.num_steps, create_graph if create_graph else False)
        else:
            scored = mu
        log_lik = -self.gaussian_nll(self.sse(x, y, m, scored), self.count(m, y.shape[-1]))  # [K, T]
        log_r = torch.log_softmax(self.mixture_logits[:, None] + log_lik, 0)
        return means, log_r

    def guide(self, batch: TaskBatch) -> None:
        """``c_t ~ Cat(r_t)``, ``theta_t ~ N(m_{t,c}, sigma_c^2)``, ``phi_t = delta(adapt(theta_t))`` (auxiliary c, theta)."""
        self.check(batch)
        train = self.training
        means, log_r = self.components(batch, create_graph=train)
        x, y, m = batch.context_x, batch.context_y, batch.context_mask
        with task_plate(batch):
            c = pyro.sample(
                "component", dist.Categorical(logits=log_r.T.unsqueeze(-2)), infer={"is_auxiliary": True}
            )  # [..., T, 1]
            onehot = nn.functional.one_hot(c.squeeze(-1), self.num_components).to(means.dtype)  # [..., T, K]
            loc = torch.einsum("...tk,ktp->...tp", onehot, means).unsqueeze(-2)  # [..., T, 1, P]
            scale = (onehot @ self.log_sigma_k.exp()).unsqueeze(-2)
            theta_t = pyro.sample("theta_task", dist.Normal(loc, scale).to_event(1), infer={"is_auxiliary": True})
            phi = self._adapt(theta_t.squeeze(-2), x, y, m, self.num_steps, None if train else False)
            pyro.sample("phi", dist.Delta(phi.unsqueeze(-2), event_dim=1))

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """``-(1/n_t) log sum_k r_tk p(y_tgt | f(x_tgt; phi_tk))``, ``phi_tk`` adapted from ``theta ~ N(m_tk, sigma_k^2)``."""
        self.training_inputs(batch)
        means, log_r = self.components(batch)
        theta = means + self.log_sigma_k.exp()[:, None, :] * torch.randn_like(means)
        x, y, m = batch.context_x, batch.context_y, batch.context_mask
        phi = self._adapt(theta, x, y, m, self.num_steps, None)  # [K, T, P]
        count = self.count(batch.target_mask, batch.y_dim)
        log_tgt = -self.gaussian_nll(self.sse(batch.target_x, batch.target_y, batch.target_mask, phi), count)
        return (-torch.logsumexp(log_r + log_tgt, 0) / count).mean()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_components={self.num_components}"
