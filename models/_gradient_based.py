"""The hierarchical model shared by the gradient-based meta-learners (MAML, ABML, BMAML, PLATIPUS).

Model (per task ``t``; ``f_phi`` a :class:`~pyro_meta.nn.FunctionalMLP` with flat weights ``phi``)::

    phi_t ~ N(theta, diag(sigma^2))                 # task latent "phi", [T, 1, P]
    y_tn  ~ N(f_phi_t(x_tn), noise_std^2 I)         # y_context / y_target, [T, N, Dy]

The four models share this ``model`` (so NUTS over ``phi`` is the same gold standard for all of
them) and differ in their guide (how ``phi_t`` is adapted to a task's context set) and in their
meta-objective (``loss``). Per-task weights are one flat tensor with a leading task dim
evaluated by batched matrix products, never a Python loop over tasks.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_meta.data.batch import TaskBatch
from pyro_meta.model import MetaModel, check_batch, observe, task_plate
from pyro_meta.nn import FunctionalMLP

__all__ = ["GradientBasedModel", "kl_diag_normal", "positive_param"]


def positive_param(value: float, name: str, learn: bool) -> Tuple[torch.Tensor, bool]:
    """``log(value)`` as a tensor (to be an ``nn.Parameter`` when ``learn``); ``ValueError`` unless ``value > 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return torch.tensor(math.log(float(value))), learn


def kl_diag_normal(mu1: torch.Tensor, log_s1: torch.Tensor, mu2: torch.Tensor, log_s2: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu1, diag(s1^2)) || N(mu2, diag(s2^2)))`` summed over the last dim.

    ``sum_p log(s2/s1) + (s1^2 + (mu1 - mu2)^2) / (2 s2^2) - 1/2``.
    """
    log_ratio = 2 * (log_s1 - log_s2)
    return 0.5 * (log_ratio.exp() + (mu1 - mu2) ** 2 * torch.exp(-2 * log_s2) - 1 - log_ratio).sum(-1)


class GradientBasedModel(MetaModel):
    """Base class: base network, prior ``N(theta, diag(sigma^2))`` over its weights, Gaussian noise.

    Parameters
    ----------
    x_dim, y_dim : int
        Input and output sizes.
    hidden : sequence of int
        Hidden widths of the base network (the MAML sinusoid net is ``(40, 40)``).
    activation : str
        Hidden nonlinearity of the base network.
    prior_scale : float
        Initial (or fixed) prior scale ``sigma`` of every weight.
    learn_prior_scale : bool
        Make ``log sigma`` an ``nn.Parameter``.
    noise_std : float
        Initial (or fixed) observation noise.
    learn_noise : bool
        Make ``log noise_std`` an ``nn.Parameter``.
    inner_steps : int
        Adaptation steps ``K`` at meta-training time.
    eval_inner_steps : int, optional
        Adaptation steps in eval mode (inference, prediction); default ``inner_steps``.
    first_order : bool
        Drop second derivatives through the adaptation (first-order approximation).
    """

    #: the prior mean ``theta`` is an ``nn.Parameter`` of its own (BMAML derives it from its particles)
    owns_theta: bool = True

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        hidden: Sequence[int] = (40, 40),
        activation: str = "relu",
        prior_scale: float = 0.1,
        learn_prior_scale: bool = False,
        noise_std: float = 0.5,
        learn_noise: bool = True,
        inner_steps: int = 1,
        eval_inner_steps: Optional[int] = None,
        first_order: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("x_dim", x_dim), ("y_dim", y_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(hidden, int):
            hidden = (hidden,)
        self.net = FunctionalMLP((x_dim, *tuple(hidden), y_dim), activation)
        self.num_params = self.net.num_params
        if self.owns_theta:
            self.theta = nn.Parameter(self.net.init_params())
        self._register_positive("log_sigma", prior_scale, "prior_scale", learn_prior_scale, shape=(self.num_params,))
        self._register_positive("log_noise", noise_std, "noise_std", learn_noise)
        self.inner_steps = self._check_steps(inner_steps, "inner_steps")
        self.eval_inner_steps = self._check_steps(
            inner_steps if eval_inner_steps is None else eval_inner_steps, "eval_inner_steps"
        )
        self.first_order = bool(first_order)

    # ------------------------------------------------------------------ parameters
    def _register_positive(self, attr: str, value: float, name: str, learn: bool, shape: Tuple[int, ...] = ()) -> None:
        log_value, learn = positive_param(value, name, learn)
        log_value = log_value.expand(shape).clone()
        if learn:
            setattr(self, attr, nn.Parameter(log_value))
        else:
            self.register_buffer(attr, log_value)

    @staticmethod
    def _check_steps(value: int, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        return value

    @property
    def sigma(self) -> torch.Tensor:
        """Prior scale ``[P]``."""
        return self.log_sigma.exp()

    @property
    def noise_std(self) -> torch.Tensor:
        """Observation noise (a scalar tensor)."""
        return self.log_noise.exp()

    @property
    def num_steps(self) -> int:
        """Adaptation steps now: ``inner_steps`` in train mode, ``eval_inner_steps`` in eval mode."""
        return self.inner_steps if self.training else self.eval_inner_steps

    # ------------------------------------------------------------------ the model
    def prior(self) -> dist.Distribution:
        """``p(phi) = N(theta, diag(sigma^2))``, event ``[P]``."""
        return dist.Normal(self.theta, self.sigma).to_event(1)

    def model(self, batch: TaskBatch) -> None:
        """``phi_t ~ N(theta, diag(sigma^2))`` ([T, 1, P]); ``y ~ N(f_phi(x), noise^2)`` ([T, N, Dy])."""
        self.check(batch)
        with task_plate(batch):
            phi = pyro.sample("phi", self.prior())
            observe(batch, lambda x: dist.Normal(self.net(x, phi), self.noise_std).to_event(1))

    def check(self, batch: TaskBatch) -> TaskBatch:
        """``TypeError``/``ValueError`` unless ``batch`` is a regression batch of this net's sizes."""
        check_batch(batch)
        if batch.is_classification:
            raise ValueError(f"{type(self).__name__} is a regression model: batch has class labels")
        if batch.x_dim != self.net.in_features or batch.y_dim != self.net.out_features:
            raise ValueError(
                f"batch has Dx={batch.x_dim}, Dy={batch.y_dim} but {type(self).__name__} was built for "
                f"x_dim={self.net.in_features}, y_dim={self.net.out_features}"
            )
        return batch

    # ------------------------------------------------------------------ losses on flat weights
    def sse(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Masked sum of squared errors per task ``sum_n m_n ||f_phi(x_n) - y_n||^2``: ``[..., T]``.

        ``x [T, N, Dx]``, ``y [T, N, Dy]``, ``mask [T, N]``, flat weights ``phi [..., T, P]``.
        """
        err = (self.net(x, phi.unsqueeze(-2)) - y) ** 2
        return (err.sum(-1) * mask.to(err.dtype)).sum(-1)

    @staticmethod
    def count(mask: torch.Tensor, y_dim: int = 1) -> torch.Tensor:
        """Observed numbers per task ``n_t * Dy`` (at least 1): ``[T]``."""
        return (mask.sum(-1) * y_dim).clamp_min(1).to(torch.get_default_dtype())

    def mse(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Masked mean squared error per task: ``[..., T]`` (MAML's task loss); ``phi [..., T, P]``."""
        return self.sse(x, y, mask, phi) / self.count(mask, y.shape[-1])

    def gaussian_nll(self, sse: torch.Tensor, count: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``-log N(y | f, noise^2)`` summed over a task's points, from its ``sse`` and ``count = n_t Dy``.

        ``noise`` defaults to :attr:`noise_std` (pass a detached one to keep it out of a gradient).
        """
        noise = self.noise_std if noise is None else noise
        return 0.5 * sse / noise**2 + count * (torch.log(noise) + 0.5 * math.log(2 * math.pi))

    def predictive_noise_loss(self, weights: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """Fit ``noise_std`` by maximum likelihood of the target set under the test-time predictive.

        ``weights [S, T, P]``: detached draws (or particles) of the guide's test-time adaptation
        (``eval_inner_steps``). The loss is ``-mean_{real points} log (1/S sum_s N(y | f_s(x), noise^2))``
        written as ``nll - nll.detach()``: its value is 0 and its gradient moves the noise only,
        so that the predictive's spread matches the residuals of the predictor actually used
        (fitting it to the training-time adaptation overestimates it when more steps are taken
        at test time). 0 when the noise is fixed.
        """
        if not isinstance(self.log_noise, nn.Parameter):
            return batch.target_x.new_zeros(())
        with torch.no_grad():
            f = self.net(batch.target_x, weights.detach().unsqueeze(-2))  # [S, T, N, Dy]
        if not bool(torch.isfinite(f).all()):
            raise FloatingPointError(
                f"{type(self).__name__}: the test-time adaptation (eval_inner_steps={self.eval_inner_steps}) "
                "diverged to non-finite predictions; lower the inner step size or eval_inner_steps, or rescale y"
            )
        lp = dist.Normal(f, self.noise_std).log_prob(batch.target_y).sum(-1)  # [S, T, N]
        lp = torch.logsumexp(lp, 0) - math.log(lp.shape[0])
        mask = batch.target_mask.to(lp.dtype)
        nll = -(lp * mask).sum() / mask.sum().clamp_min(1)
        return nll - nll.detach()

    @staticmethod
    def task_grad(loss_fn, p: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        """``grad_p sum(loss_fn(p))``: every task's own gradient for per-task losses ``[..., T]`` of ``p [..., T, P]``.

        Differentiable (``create_graph``) when ``p`` requires grad; otherwise ``p`` is a fresh
        leaf and the gradient is detached (inference with frozen parameters).
        """
        with torch.enable_grad():
            tracked = p.requires_grad
            q = p if tracked else p.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_fn(q).sum(), q, create_graph=create_graph and tracked)
        return g

    def kl_to_prior(self, mu: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """``KL(N(mu, diag(s^2)) || N(theta, diag(sigma^2)))`` per task: ``[..., T, P]`` -> ``[..., T]``.

        ``sum_p log(sigma_p / s_p) + (s_p^2 + (mu_p - theta_p)^2) / (2 sigma_p^2) - 1/2``.
        """
        return kl_diag_normal(mu, log_scale, self.theta, self.log_sigma)

    def extra_repr(self) -> str:
        return f"num_params={self.num_params}, inner_steps={self.inner_steps}, eval_inner_steps={self.eval_inner_steps}"
