"""``MAML``: model-agnostic meta-learning (Finn, Abbeel & Levine 2017) as a Pyro model and guide.

Model: the hierarchical model of :class:`~pyro_meta.models._gradient_based.GradientBasedModel`,
``phi_t ~ N(theta, diag(sigma^2))``, ``y ~ N(f_phi_t(x), noise^2)``.

Guide: a point mass at ``K`` gradient steps on the context loss ``L`` (the MSE, or the mean cross-entropy
for class labels) from the meta-learned initialisation, ``phi_t = theta - alpha sum_k grad L_ctx(phi_t^k)``,
``q(phi_t) = delta(phi_t^K)`` (MAP-like adaptation, Grant et al. 2018).

Meta-objective (:meth:`MAML.loss`): the target-set loss ``L`` after adaptation (MSE; cross-entropy for
``likelihood="categorical"``/``"bernoulli"``), averaged over tasks,
differentiated through the inner steps (second order unless ``first_order``). Pure torch on
the batch: Pyro stays out of the training hot path, while ``guide`` runs the same adaptation.
The observation noise is fit to the target residuals after the test-time adaptation by maximum
likelihood (detached, so it does not move ``theta``); the prior scale ``sigma`` is not touched by MAML's objective
and stays at ``prior_scale`` (it only matters for NUTS over ``phi``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch

from pyro_meta.data.batch import TaskBatch
from pyro_meta.model import task_plate
from pyro_meta.nn import inner_loop

from ._gradient_based import GradientBasedModel

__all__ = ["MAML"]


class MAML(GradientBasedModel):
    """Model-agnostic meta-learning with a point-mass guide.

    Parameters
    ----------
    inner_lr : float
        Step size ``alpha`` of the inner gradient steps on the context loss (0.01 on the MSE in the MAML
        sinusoid experiments; 0.4 on the cross-entropy in MAML's Omniglot experiments).
    learn_inner_lr : bool
        Meta-learn one positive ``alpha`` (log-parametrised).
    inner_steps, eval_inner_steps : int
        ``K`` at meta-training (1 in the MAML sinusoid protocol) and at test time (10 there).
    **kwargs
        Base network, likelihood, prior and noise options of
        :class:`~pyro_meta.models._gradient_based.GradientBasedModel` (``likelihood``, ``num_classes``,
        ``net="conv4"``, ``image_shape``, ``adapt``...).
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        hidden: Sequence[int] = (40, 40),
        inner_lr: float = 0.01,
        learn_inner_lr: bool = False,
        inner_steps: int = 1,
        eval_inner_steps: Optional[int] = None,
        first_order: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(
            x_dim=x_dim,
            y_dim=y_dim,
            hidden=hidden,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            first_order=first_order,
            **kwargs,
        )
        self._register_positive("log_inner_lr", inner_lr, "inner_lr", learn_inner_lr)

    @property
    def inner_lr(self) -> torch.Tensor:
        return self.log_inner_lr.exp()

    def adapt(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, steps: Optional[int] = None, detach: bool = False
    ) -> torch.Tensor:
        """``K`` steps ``phi <- phi - alpha grad L_t(phi)`` from ``theta``: ``x [T, N, Dx]`` -> ``phi_K [T, P]``.

        ``x`` are the adapted network's inputs (:meth:`encode`: the shared features when ``adapt="head"``);
        ``detach=True`` starts from a detached ``theta`` (no graph: a cheap evaluation).
        """
        steps = self.num_steps if steps is None else steps
        theta = self.theta.detach() if detach else self.theta
        phi0 = theta.expand(x.shape[0], theta.shape[-1])
        return inner_loop(
            lambda p: self.task_loss(x, y, mask, p), phi0, steps, self.inner_lr, first_order=self.first_order
        )

    def guide(self, batch: TaskBatch) -> None:
        """``q(phi_t | context_t) = delta(phi_t^K)``, ``phi_t^K`` = ``K`` steps on the context from ``theta``."""
        self.check(batch)
        phi = self.adapt(self.encode(batch.context_x, batch.context_mask), batch.context_y, batch.context_mask)
        with task_plate(batch):
            pyro.sample("phi", dist.Delta(phi.unsqueeze(-2), event_dim=1))

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """Target loss (MSE, or mean cross-entropy for class labels) after adaptation on the context, mean over tasks.

        The returned value is that loss; for ``likelihood="normal"`` its gradient also fits the noise to the
        target residuals after the *test-time* adaptation (``eval_inner_steps``, a zero-valued term, see
        :meth:`predictive_noise_loss`).
        """
        xc, xt = self.training_inputs(batch)
        phi = self.adapt(xc, batch.context_y, batch.context_mask)
        loss = self.task_loss(xt, batch.target_y, batch.target_mask, phi).mean()
        return self.with_noise_fit(
            loss,
            batch,
            xt,
            lambda: phi.unsqueeze(0),
            lambda: self.adapt(
                xc.detach(), batch.context_y, batch.context_mask, self.eval_inner_steps, detach=True
            ).unsqueeze(0),
        )
