"""``PLATIPUS``: probabilistic latent model for incorporating priors and uncertainty in few-shot learning
(Finn, Xu & Levine 2018).

Model: the shared hierarchical model with the PLATIPUS prior over the base network's weights,
``phi_t ~ N(mu_theta, diag(sigma_theta^2))``, ``y ~ N(f_phi_t(x), noise^2)`` (NUTS over ``phi`` is
the gold standard, as for the rest of the family).

Inference networks: gradient-shifted Gaussians over the pre-adaptation weights ``theta_t``,
followed by ``K`` gradient steps on the context (task loss ``L``: the MSE, or the mean cross-entropy
for class labels; step ``alpha``)::

    test time (guide):  theta_t ~ p(theta | ctx)      = N(mu_theta - gamma_p grad L(ctx, mu_theta), sigma_theta^2)
    training (loss):    theta_t ~ q(theta | ctx, tgt) = N(mu_theta - gamma_q grad L(ctx + tgt, mu_theta), v_q^2)
    then                phi_t = theta_t - alpha grad L(ctx, theta_t)       (K times)

Meta-objective (:meth:`PLATIPUS.loss`): ``L(tgt, phi_t) + kl_weight KL(q(theta | ctx, tgt) || p(theta | ctx))``,
mean over tasks, differentiated through the steps (second order unless ``first_order``). It
meta-learns ``mu_theta``, ``sigma_theta``, ``v_q`` and ``gamma_p``, ``gamma_q``; the noise is fit by
maximum likelihood of the target set under draws of the test-time guide (``eval_inner_steps``; a
zero-valued term, as in :class:`MAML`).
The guide's ``theta_t`` is an auxiliary site ``"theta_task"``; the task latent is ``"phi"``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_meta.data.batch import TaskBatch
from pyro_meta.model import task_plate
from pyro_meta.nn import inner_loop

from ._gradient_based import GradientBasedModel, kl_diag_normal

__all__ = ["PLATIPUS"]


class PLATIPUS(GradientBasedModel):
    """PLATIPUS: a learned Gaussian prior over MAML's initialisation, gradient-shifted inference networks.

    Parameters
    ----------
    inner_lr : float
        ``alpha``, the step of the adaptation from ``theta_t`` (0.01 as MAML).
    learn_inner_lr : bool
        Meta-learn ``alpha`` as well.
    shift_lr : float
        Initial ``gamma_p`` and ``gamma_q`` (learned, log-parametrised).
    prior_scale, posterior_scale : float
        Initial ``sigma_theta`` and ``v_q`` (both learned).
    kl_weight : float
        Weight of the KL term in the meta-objective.
    num_samples : int
        Draws of ``theta_t ~ q`` in the meta-objective.
    inner_steps, eval_inner_steps : int
        Adaptation steps from ``theta_t`` at training and test time (1 in the paper).
    **kwargs
        Base network, likelihood and noise options of :class:`~pyro_meta.models._gradient_based.GradientBasedModel`
        (``likelihood``, ``num_classes``, ``net="conv4"``, ``image_shape``, ``adapt``...).
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        hidden: Sequence[int] = (40, 40),
        inner_lr: float = 0.01,
        learn_inner_lr: bool = False,
        shift_lr: float = 0.01,
        prior_scale: float = 0.02,
        posterior_scale: float = 0.02,
        kl_weight: float = 0.1,
        num_samples: int = 1,
        inner_steps: int = 1,
        eval_inner_steps: Optional[int] = None,
        first_order: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(
            x_dim=x_dim,
            y_dim=y_dim,
            hidden=hidden,
            prior_scale=prior_scale,
            learn_prior_scale=True,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            first_order=first_order,
            **kwargs,
        )
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or kl_weight < 0:
            raise ValueError(f"kl_weight must be a non-negative number, got {kl_weight!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.kl_weight, self.num_samples = float(kl_weight), num_samples
        self._register_positive("log_q_scale", posterior_scale, "posterior_scale", True, shape=(self.num_params,))
        self._register_positive("log_gamma_p", shift_lr, "shift_lr", True)
        self._register_positive("log_gamma_q", shift_lr, "shift_lr", True)
        self._register_positive("log_inner_lr", inner_lr, "inner_lr", learn_inner_lr)

    def shifted_mean(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, log_gamma: torch.Tensor, create_graph: bool = True
    ) -> torch.Tensor:
        """``mu_theta - gamma grad_mu L(x, y; mu_theta)`` per task: ``[T, P]`` (``x``: the network's inputs, :meth:`encode`)."""
        T, P = x.shape[0], self.num_params
        g = self.task_grad(lambda p: self.task_loss(x, y, mask, p), self.theta.expand(T, P), create_graph)
        return self.theta - log_gamma.exp() * g

    def adapt_from(
        self,
        theta_t: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        steps: Optional[int] = None,
        create_graph: Optional[bool] = None,
    ) -> torch.Tensor:
        """``K`` steps ``phi <- phi - alpha grad L(ctx, phi)`` from ``theta_t [..., T, P]``: ``phi [..., T, P]``."""
        steps = self.num_steps if steps is None else steps
        return inner_loop(
            lambda p: self.task_loss(x, y, mask, p),
            theta_t,
            steps,
            self.log_inner_lr.exp(),
            first_order=self.first_order,
            create_graph=create_graph,
        )

    def guide(self, batch: TaskBatch) -> None:
        """``theta_t ~ N(mu_theta - gamma_p grad L(ctx, mu_theta), sigma_theta^2)``; ``phi_t = delta(K steps from theta_t)``."""
        self.check(batch)
        x, y, m = self.encode(batch.context_x, batch.context_mask), batch.context_y, batch.context_mask
        train = self.training
        mean = self.shifted_mean(x, y, m, self.log_gamma_p, create_graph=train)
        with task_plate(batch):
            theta_t = pyro.sample(
                "theta_task", dist.Normal(mean.unsqueeze(-2), self.sigma).to_event(1), infer={"is_auxiliary": True}
            )
            phi = self.adapt_from(theta_t.squeeze(-2), x, y, m, create_graph=None if train else False)
            pyro.sample("phi", dist.Delta(phi.unsqueeze(-2), event_dim=1))

    def _posterior_prior(
        self, batch: TaskBatch, xc: Optional[torch.Tensor] = None, xt: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if xc is None or xt is None:
            xc, xt = self.encode_batch(batch)
        m_p = self.shifted_mean(xc, batch.context_y, batch.context_mask, self.log_gamma_p)
        x, y, mask = self.observed_inputs(batch, xc, xt)
        m_q = self.shifted_mean(x, y, mask, self.log_gamma_q)
        return m_q, m_p

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """``L(tgt, phi_t) + kl_weight KL(q(theta | ctx, tgt) || p(theta | ctx))``, ``theta_t ~ q``, mean over tasks."""
        xc, xt = self.training_inputs(batch)
        m_q, m_p = self._posterior_prior(batch, xc, xt)
        eps = torch.randn((self.num_samples,) + tuple(m_q.shape), dtype=m_q.dtype, device=m_q.device)
        theta_t = m_q + self.log_q_scale.exp() * eps  # [L, T, P]
        phi = self.adapt_from(theta_t, xc, batch.context_y, batch.context_mask)
        loss = self.task_loss(xt, batch.target_y, batch.target_mask, phi).mean(0)
        kl = kl_diag_normal(m_q, self.log_q_scale, m_p, self.log_sigma)
        loss = (loss + self.kl_weight * kl).mean()

        def draws() -> torch.Tensor:  # the test-time guide (no posterior over the targets): always its own draws
            return self._test_time_draws(batch, xc.detach())

        return self.with_noise_fit(loss, batch, xt, draws, draws)

    def _test_time_draws(self, batch: TaskBatch, xc: torch.Tensor, num: int = 4) -> torch.Tensor:
        """``num`` detached draws ``[num, T, P]`` of the guide's test-time ``phi`` (for the noise fit)."""
        if not isinstance(self.log_noise, nn.Parameter):
            return self.theta.detach().expand(1, batch.num_tasks, -1)
        x, y, m = xc, batch.context_y, batch.context_mask
        mean = self.shifted_mean(x, y, m, self.log_gamma_p, create_graph=False).detach()
        theta_t = mean + self.sigma.detach() * torch.randn(
            (num,) + tuple(mean.shape), dtype=mean.dtype, device=mean.device
        )
        return self.adapt_from(theta_t, x, y, m, steps=self.eval_inner_steps, create_graph=False).detach()
