"""The hierarchical model shared by the gradient-based meta-learners (MAML, ABML, BMAML, PLATIPUS).

Model (per task ``t``; ``f_phi`` the base network with flat weights ``phi``)::

    phi_t ~ N(theta, diag(sigma^2))                 # task latent "phi", [T, 1, P]
    y_tn  ~ N(f_phi_t(x_tn), noise_std^2 I)         # likelihood="normal": y_context / y_target [T, N, Dy]
    y_tn  ~ Categorical(softmax(f_phi_t(x_tn)))     # likelihood="categorical": long labels [T, N], K logits
    y_tn  ~ Bernoulli(sigmoid(f_phi_t(x_tn)))       # likelihood="bernoulli": labels 0/1 [T, N], one logit

The base network is a :class:`~pyro_meta.nn.FunctionalMLP` (``net="mlp"``) or the few-shot Conv-4
:class:`~pyro_meta.nn.FunctionalConv4` on flattened images (``net="conv4"``, ``image_shape``). With
``adapt="all"`` (default) ``phi`` is every weight of the network (MAML's adaptation); with
``adapt="head"`` (ANIL, Raghu et al. 2020) the feature layers are a shared, meta-learned
:class:`~pyro_meta.models._features.FeatureExtractor` ``h(x)`` (a point estimate, like ``theta``) and
``phi`` is the last linear layer only, ``f_phi(x) = head(h(x); phi)``: the same hierarchical model over
far fewer latent weights (cheap on a CPU, and small enough for NUTS).

The four models share this ``model`` (so NUTS over ``phi`` is the same gold standard for all of
them) and differ in their guide (how ``phi_t`` is adapted to a task's context set) and in their
meta-objective (``loss``). Per-task weights are one flat tensor with a leading task dim
evaluated by batched matrix products (grouped convolutions for Conv-4), never a Python loop over tasks.
Their task losses follow the likelihood: the mean squared error for "normal", the mean cross-entropy
(negative log-likelihood per point) for "categorical"/"bernoulli"; the noise is only fitted for "normal".
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_meta.data.batch import SPLITS, TaskBatch
from pyro_meta.likelihoods import check_likelihood, likelihood_from_outputs, num_outputs
from pyro_meta.model import MetaModel, check_batch, observe, task_plate
from pyro_meta.nn import FunctionalConv4, FunctionalMLP

from ._features import FeatureExtractor, encode_sets

__all__ = ["ADAPTS", "HEAD_INITS", "NETS", "GradientBasedModel", "kl_diag_normal", "positive_param"]

NETS = ("mlp", "conv4")
ADAPTS = ("all", "head")
HEAD_INITS = ("random", "zeros")


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
    """Base class: base network, prior ``N(theta, diag(sigma^2))`` over its (adapted) weights, a likelihood.

    Parameters
    ----------
    x_dim, y_dim : int
        Input and output sizes (``net="mlp"``; ``y_dim`` only for ``likelihood="normal"``).
    hidden : sequence of int
        Hidden widths of the MLP (the MAML sinusoid net is ``(40, 40)``).
    activation : str
        Hidden nonlinearity of the MLP.
    prior_scale : float
        Initial (or fixed) prior scale ``sigma`` of every weight.
    learn_prior_scale : bool
        Make ``log sigma`` an ``nn.Parameter``.
    noise_std : float
        Initial (or fixed) observation noise (``likelihood="normal"`` only).
    learn_noise : bool
        Make ``log noise_std`` an ``nn.Parameter`` (``likelihood="normal"`` only; otherwise there is no noise).
    inner_steps : int
        Adaptation steps ``K`` at meta-training time.
    eval_inner_steps : int, optional
        Adaptation steps in eval mode (inference, prediction); default ``inner_steps``.
    first_order : bool
        Drop second derivatives through the adaptation (first-order approximation).
    likelihood : "normal" | "categorical" | "bernoulli"
        ``y ~ N(f(x), noise^2)``, ``Categorical(softmax(f(x)))`` over ``num_classes`` labels, or
        ``Bernoulli(sigmoid(f(x)))`` over labels 0/1 (long or bool labels are fine).
    num_classes : int, optional
        ``K``, the logits of ``likelihood="categorical"`` (the ``N`` of N-way episodes).
    net : "mlp" | "conv4"
        The base network: :class:`~pyro_meta.nn.FunctionalMLP` on ``x [T, N, x_dim]``, or the Conv-4
        image network on flattened images ``x [T, N, C*H*W]`` (``image_shape``; ``x_dim`` is then ignored).
    image_shape : (C, H, W), optional
        Shape of one image for ``net="conv4"`` (Omniglot: ``(1, 28, 28)``).
    channels : int
        Channels of every Conv-4 block (64 in the standard network).
    norm : "batch" | "instance" | "none"
        Normalisation of the per-task Conv-4 (``adapt="all"``; see :class:`~pyro_meta.nn.FunctionalConv4`: batch
        norm there is per task and call). With ``adapt="head"`` the shared extractor uses ordinary batch norm.
    adapt : "all" | "head"
        Adapt every weight (``phi`` = the whole network, MAML) or only the last linear layer on top of a
        shared meta-learned feature extractor (``phi`` = the head, ANIL).
    head_init : "random" | "zeros"
        Start of the meta-learned initialisation's last linear layer (weights and biases): ``nn.Linear``'s
        random default, or all zeros. With labels permuted per episode a class-specific random start only
        biases the first steps towards arbitrary classes; zeros is permutation-invariant (Ye & Chao 2022,
        "How to train your MAML to excel in few-shot classification"). Only for models with one
        initialisation ``theta`` (not BMAML's particles, which SVGD could never separate).
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
        likelihood: str = "normal",
        num_classes: Optional[int] = None,
        net: str = "mlp",
        image_shape: Optional[Sequence[int]] = None,
        channels: int = 64,
        norm: str = "batch",
        adapt: str = "all",
        head_init: str = "random",
    ) -> None:
        super().__init__()
        for name, value in (("x_dim", x_dim), ("y_dim", y_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.likelihood = check_likelihood(likelihood)
        if net not in NETS:
            raise ValueError(f"net must be one of {NETS}, got {net!r}")
        if adapt not in ADAPTS:
            raise ValueError(f"adapt must be one of {ADAPTS}, got {adapt!r}")
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
        if head_init != "random" and not self.owns_theta:
            raise ValueError(
                f"head_init={head_init!r} needs a single initialisation theta; {type(self).__name__}'s initial "
                "particles or components would start identical"
            )
        if likelihood != "normal" and y_dim != 1:
            raise ValueError(f"y_dim is for likelihood='normal' (class labels are [T, N]), got y_dim={y_dim}")
        self.num_classes = num_classes if likelihood == "categorical" else (2 if likelihood == "bernoulli" else None)
        out = num_outputs(likelihood, y_dim, num_classes)
        self.adapt_mode, self.net_kind = adapt, net
        if isinstance(hidden, int):
            hidden = (hidden,)
        hidden = tuple(hidden)
        self.backbone: Optional[FeatureExtractor] = None
        if net == "conv4":
            if image_shape is None:
                raise ValueError("net='conv4' needs image_shape=(C, H, W), e.g. (1, 28, 28) for Omniglot")
            if adapt == "all":
                self.net = FunctionalConv4(image_shape, channels, num_classes=out, norm=norm)
            else:
                self.backbone = FeatureExtractor("conv4", image_shape=image_shape, channels=channels)
        elif adapt == "all":
            self.net = FunctionalMLP((x_dim, *hidden, out), activation)
        else:
            if not hidden:
                raise ValueError("adapt='head' needs at least one hidden layer (the shared features)")
            mlp_act = activation if activation in ("relu", "tanh", "silu", "gelu") else "relu"
            self.backbone = FeatureExtractor("mlp", x_dim=x_dim, hidden=hidden, activation=mlp_act)
        if self.backbone is not None:
            self.net = FunctionalMLP((self.backbone.feature_dim, out))
        self.in_features = (
            self.backbone.in_features
            if self.backbone is not None
            else (self.net.in_features if net == "mlp" else math.prod(self.net.image_shape))
        )
        self.out_features = out
        self.num_params = self.net.num_params
        if self.owns_theta:
            theta = self.net.init_params()
            if head_init == "zeros":
                theta[theta.numel() - self.head_size :] = 0.0
            self.theta = nn.Parameter(theta)
        self._register_positive("log_sigma", prior_scale, "prior_scale", learn_prior_scale, shape=(self.num_params,))
        self._register_positive("log_noise", noise_std, "noise_std", learn_noise and likelihood == "normal")
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
    def head_size(self) -> int:
        """Numbers in the last linear layer (weights and biases): the tail of ``theta [P]``."""
        if isinstance(self.net, FunctionalMLP):
            d_in, d_out = self.net.sizes[-2:]
            return d_in * d_out + d_out
        return self.net.num_head_params

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

    # ------------------------------------------------------------------ the network
    def encode(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Inputs of the adapted network: the shared features ``h(x) [T, N, F]`` (``adapt="head"``), else ``x``."""
        return x if self.backbone is None else self.backbone(x, mask)

    def encode_batch(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(context inputs, target inputs)`` of the adapted network.

        With ``adapt="head"`` the shared extractor's features (context and target images in one pass while
        training, so that its batch norm sees both); otherwise the batch's own ``x``.
        """
        if self.backbone is None:
            return batch.context_x, batch.target_x
        return encode_sets(self.backbone, batch)

    @staticmethod
    def observed_inputs(
        batch: TaskBatch, xc: torch.Tensor, xt: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`TaskBatch.observed` with the encoded inputs ``xc``, ``xt``: ``(x, y, mask)`` of every observed point."""
        if batch.target_y is None or batch.num_points("target") == 0:
            return xc, batch.context_y, batch.context_mask
        return (
            torch.cat([xc, xt], 1),
            torch.cat([batch.context_y, batch.target_y], 1),
            torch.cat([batch.context_mask, batch.target_mask], 1),
        )

    def outputs(self, x: torch.Tensor, phi: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``f_phi(x)``: encoded inputs ``x [T, N, D]``, weights ``phi [..., T, P]`` -> ``[..., T, N, O]``.

        ``O`` is ``Dy`` (normal), ``K`` (categorical) or 1 (bernoulli); ``mask [T, N]`` keeps padded images
        out of the per-task Conv-4's batch norm.
        """
        if isinstance(self.net, FunctionalConv4):
            return self.net(x, phi.unsqueeze(-2), mask)
        return self.net(x, phi.unsqueeze(-2))

    def likelihood_dist(self, out: torch.Tensor) -> dist.Distribution:
        """``p(y | f(x))`` from outputs ``[..., T, N, O]``: batch ``[..., T, N]`` (event ``[Dy]`` for normal)."""
        return likelihood_from_outputs(self.likelihood, out, self.noise_std)

    # ------------------------------------------------------------------ the model
    def prior(self) -> dist.Distribution:
        """``p(phi) = N(theta, diag(sigma^2))``, event ``[P]``."""
        return dist.Normal(self.theta, self.sigma).to_event(1)

    def model(self, batch: TaskBatch) -> None:
        """``phi_t ~ N(theta, diag(sigma^2))`` ([T, 1, P]); ``y ~ p(y | f_phi(x))`` ([T, N, Dy] or labels [T, N])."""
        self.check(batch)
        inputs = dict(zip(SPLITS, self.encode_batch(batch)))
        with task_plate(batch):
            phi = pyro.sample("phi", self.prior()).squeeze(-2)  # [..., T, P]
            for split in SPLITS:
                observe(
                    batch,
                    lambda x, s=split: self.likelihood_dist(self.outputs(inputs[s], phi, batch.mask(s))),
                    splits=(split,),
                )

    def check(self, batch: TaskBatch) -> TaskBatch:
        """``TypeError``/``ValueError`` unless ``batch`` suits this model's inputs and likelihood."""
        check_batch(batch)
        name = type(self).__name__
        if self.likelihood == "normal" and batch.is_classification:
            raise ValueError(
                f"{name} is a regression model (likelihood='normal'): batch has class labels; build it "
                "with likelihood='categorical' (and num_classes) or 'bernoulli' for labels"
            )
        if self.likelihood != "normal" and not batch.is_classification:
            raise ValueError(
                f"{name}(likelihood={self.likelihood!r}) takes class labels (long [T, N]); the batch has real-valued y"
            )
        y_dim = batch.y_dim if self.likelihood == "normal" else self.out_features
        if batch.x_dim != self.in_features or y_dim != self.out_features:
            raise ValueError(
                f"batch has Dx={batch.x_dim}, Dy={batch.y_dim} but {name} was built for "
                f"x_dim={self.in_features}, y_dim={self.out_features}"
                + (f" (image_shape={tuple(self.net.image_shape)})" if isinstance(self.net, FunctionalConv4) else "")
            )
        if self.likelihood != "normal":
            K = self.num_classes
            for split in SPLITS:
                y = batch.y(split)
                if y is not None and batch.num_points(split) and bool((y[batch.mask(split)] >= K).any()):
                    raise ValueError(
                        f"batch {split}_y has labels >= {K}, but {name} has K = {K} classes "
                        f"(likelihood={self.likelihood!r}, num_classes={self.num_classes})"
                    )
        return batch

    # ------------------------------------------------------------------ losses on flat weights
    def sse(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Masked sum of squared errors per task ``sum_n m_n ||f_phi(x_n) - y_n||^2``: ``[..., T]``.

        ``x [T, N, Dx]``, ``y [T, N, Dy]``, ``mask [T, N]``, flat weights ``phi [..., T, P]``.
        """
        err = (self.outputs(x, phi, mask) - y) ** 2
        return (err.sum(-1) * mask.to(err.dtype)).sum(-1)

    @staticmethod
    def count(mask: torch.Tensor, y_dim: int = 1) -> torch.Tensor:
        """Observed numbers per task ``n_t * Dy`` (at least 1): ``[T]``."""
        return (mask.sum(-1) * y_dim).clamp_min(1).to(torch.get_default_dtype())

    def mse(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Masked mean squared error per task: ``[..., T]`` (MAML's task loss); ``phi [..., T, P]``."""
        return self.sse(x, y, mask, phi) / self.count(mask, y.shape[-1])

    def label_nll(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Masked cross-entropy per task ``-sum_n m_n log p(y_n | f_phi(x_n))``: ``[..., T]`` (class labels).

        ``y`` long ``[T, N]``; categorical: ``-log softmax(f)_y``, bernoulli: ``-y log s(f) - (1 - y) log(1 - s(f))``.
        """
        out = self.outputs(x, phi, mask)
        if self.likelihood == "categorical":
            lsm = torch.log_softmax(out, -1)
            idx = y.clamp(0, out.shape[-1] - 1).expand(lsm.shape[:-1])
            nll = -torch.gather(lsm, -1, idx[..., None])[..., 0]
        else:
            logit = out[..., 0]
            nll = F.binary_cross_entropy_with_logits(logit, y.to(logit.dtype).expand_as(logit), reduction="none")
        return (nll * mask.to(nll.dtype)).sum(-1)

    def neg_log_lik(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        phi: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``-log p(y | f_phi(x))`` summed over a task's real points, ``[..., T]`` (``noise``: normal only)."""
        if self.likelihood == "normal":
            return self.gaussian_nll(self.sse(x, y, mask, phi), self.count(mask, y.shape[-1]), noise)
        return self.label_nll(x, y, mask, phi)

    def task_loss(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """MAML's per-task loss ``[..., T]``: the mean squared error (normal) or mean cross-entropy (class labels)."""
        if self.likelihood == "normal":
            return self.mse(x, y, mask, phi)
        return self.label_nll(x, y, mask, phi) / self.count(mask)

    def fit_term(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Data term of the inner objectives, in units of :meth:`step_scale` times ``-log p``: ``[..., T]``.

        Normal: ``sse / 2`` (``= noise^2 (-log p)`` up to a constant); class labels: the cross-entropy sum.
        """
        if self.likelihood == "normal":
            return 0.5 * self.sse(x, y, mask, phi)
        return self.label_nll(x, y, mask, phi)

    def step_scale(self) -> torch.Tensor:
        """Preconditioner of the inner steps: ``noise^2`` (detached) for normal, 1 for class labels.

        Inner objectives are ``step_scale / n_t * (-log p + ...)``, so a step size is in the units of a MAML
        step on the mean squared error (normal) or on the mean cross-entropy (class labels).
        """
        if self.likelihood == "normal":
            return self.noise_std.detach() ** 2
        return torch.ones((), dtype=self.log_sigma.dtype, device=self.log_sigma.device)

    def gaussian_nll(
        self, sse: torch.Tensor, count: torch.Tensor, noise: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``-log N(y | f, noise^2)`` summed over a task's points, from its ``sse`` and ``count = n_t Dy``.

        ``noise`` defaults to :attr:`noise_std` (pass a detached one to keep it out of a gradient).
        """
        noise = self.noise_std if noise is None else noise
        return 0.5 * sse / noise**2 + count * (torch.log(noise) + 0.5 * math.log(2 * math.pi))

    def training_inputs(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Check a meta-training batch (it needs observed targets) and encode it: ``(x_ctx, x_tgt)``."""
        self.check(batch)
        if batch.target_y is None or batch.num_points("target") == 0:
            raise ValueError(f"batch: {type(self).__name__}'s meta-objective needs observed target points (target_y)")
        return self.encode_batch(batch)

    def with_noise_fit(
        self,
        loss: torch.Tensor,
        batch: TaskBatch,
        xt: torch.Tensor,
        train_draws: Callable[[], torch.Tensor],
        test_draws: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """``loss`` plus :meth:`predictive_noise_loss` when the noise is learned (else ``loss`` itself).

        The noise is fitted under the test-time guide: ``train_draws()`` ``[S, T, P]`` when
        ``eval_inner_steps == inner_steps``, else ``test_draws()`` (both detached).
        """
        if not isinstance(self.log_noise, nn.Parameter):
            return loss
        draws = train_draws() if self.eval_inner_steps == self.inner_steps else test_draws()
        return loss + self.predictive_noise_loss(draws, batch, xt)

    def predictive_noise_loss(
        self, weights: torch.Tensor, batch: TaskBatch, x: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Fit ``noise_std`` by maximum likelihood of the target set under the test-time predictive.

        ``weights [S, T, P]``: detached draws (or particles) of the guide's test-time adaptation
        (``eval_inner_steps``); ``x``: the encoded target inputs (default ``batch.target_x``). The loss is
        ``-mean_{real points} log (1/S sum_s N(y | f_s(x), noise^2))``
        written as ``nll - nll.detach()``: its value is 0 and its gradient moves the noise only,
        so that the predictive's spread matches the residuals of the predictor actually used
        (fitting it to the training-time adaptation overestimates it when more steps are taken
        at test time). 0 when the noise is fixed (always for class labels).
        """
        if not isinstance(self.log_noise, nn.Parameter):
            return batch.target_x.new_zeros(())
        x = batch.target_x if x is None else x
        with torch.no_grad():
            f = self.outputs(x.detach(), weights.detach(), batch.target_mask)  # [S, T, N, Dy]
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
        return (
            f"num_params={self.num_params}, inner_steps={self.inner_steps}, eval_inner_steps={self.eval_inner_steps}, "
            f"likelihood={self.likelihood!r}, adapt={self.adapt_mode!r}"
        )
