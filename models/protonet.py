"""``ProtoNet``: prototypical networks (Snell, Swersky & Zemel 2017) as a Pyro model with a task latent.

A ProtoNet classifies a query by the softmax of its negative squared distances to the class
prototypes, the means of each class's support features. Written as a meta-learner with task latents
(``T`` tasks, ``K`` classes, ``F`` features ``h(x)`` of a shared, meta-learned extractor)::

    c_tk ~ N(m, diag(s^2))                          # task latent "prototypes", [T, 1, K, F]
    y_tn ~ Categorical(softmax_k(-||h(x_tn) - c_tk||^2))      # y_context / y_target, long [T, N]

Guide: a point mass at the context class means, ``q(c_tk | context) = delta(mean_{n: y_tn = k} h(x_tn))``
(the prior mean ``m`` for a class without a support point) -- exactly Snell et al.'s prototypes, so
``infer(method="amortized")`` is the ProtoNet predictive. Because the prototypes are a task latent with
a prior, every other method applies to the same model: ``"nuts"`` samples ``p(c_t | context_t)``,
the posterior over prototypes given the support labels *and* the prior (a Bayesian ProtoNet).

Meta-objective (:meth:`ProtoNet.loss`): the ProtoNet cross-entropy of the target labels with the
context prototypes, mean over target points and tasks (Snell et al.'s episode loss), differentiated
into the extractor. The prior ``N(m, diag(s^2))`` is fitted to the context prototypes by maximum
likelihood through a zero-valued term (``nll - nll.detach()``), so it tracks the empirical distribution
of class means without touching the extractor; it only matters to the methods other than "amortized".
The number of classes ``K`` is ``num_classes`` or, by default, each batch's way (``batch.info["way"]`` or
the largest context label + 1): one trained model serves 5-way and 20-way episodes.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_meta.data.batch import SPLITS, TaskBatch
from pyro_meta.model import MetaModel, observe, task_plate

from ._features import FeatureExtractor, check_labelled_batch, class_means, encode_sets

__all__ = ["ProtoNet", "squared_distances"]


def squared_distances(h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``||h_n - c_k||^2``: features ``h [T, N, F]``, prototypes ``c [..., T, K, F]`` -> ``[..., T, N, K]``.

    Computed as ``||h||^2 - 2 h.c + ||c||^2`` (one matmul; no ``[..., T, N, K, F]`` intermediate), clamped at 0.
    """
    cross = h @ c.transpose(-1, -2)  # [..., T, N, K]
    return ((h * h).sum(-1, keepdim=True) - 2 * cross + (c * c).sum(-1).unsqueeze(-2)).clamp_min(0.0)


class ProtoNet(MetaModel):
    """Prototypical network with the class prototypes as task latents ``c_t [K, F]``.

    Parameters
    ----------
    backbone : "conv4" | "mlp"
        Shared feature extractor (:class:`~pyro_meta.models._features.FeatureExtractor`): Conv-4 on flattened
        images ``x [T, N, C*H*W]`` (``image_shape``) or an MLP on vectors ``x [T, N, x_dim]``.
    image_shape : (C, H, W), optional
        For ``"conv4"`` (Omniglot: ``(1, 28, 28)``, 64 features with 64 channels).
    x_dim : int, optional
        For ``"mlp"``.
    channels, hidden, feature_dim, test_shifts :
        Extractor options (Conv-4 channels; MLP widths; optional projection to ``F`` features; eval-mode
        features averaged over translations of up to ``test_shifts`` pixels, see
        :class:`~pyro_meta.models._features.FeatureExtractor`).
    num_classes : int, optional
        Fix ``K``; default: each batch's way.
    prior_scale : float
        Initial prior scale ``s`` of every prototype coordinate (the prior is then fitted, see the module doc).
    """

    def __init__(
        self,
        backbone: str = "conv4",
        image_shape: Optional[Sequence[int]] = (1, 28, 28),
        x_dim: Optional[int] = None,
        channels: int = 64,
        hidden: Union[int, Sequence[int]] = (64, 64),
        feature_dim: Optional[int] = None,
        test_shifts: int = 0,
        num_classes: Optional[int] = None,
        prior_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise ValueError(f"num_classes must be an int >= 2 or None (each batch's way), got {num_classes!r}")
        if isinstance(prior_scale, bool) or not isinstance(prior_scale, (int, float)) or not prior_scale > 0:
            raise ValueError(f"prior_scale must be a positive number, got {prior_scale!r}")
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
        self.num_classes = num_classes
        self.prior_loc = nn.Parameter(torch.zeros(F))
        self.prior_log_scale = nn.Parameter(torch.full((F,), math.log(float(prior_scale))))

    # ------------------------------------------------------------------ pieces
    def check(self, batch: TaskBatch) -> int:
        """``K`` of this batch; ``TypeError``/``ValueError`` unless it is a classification batch of the right inputs."""
        return check_labelled_batch(self, batch)

    def encode_batch(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features ``(h_context [T, Nc, F], h_target [T, Nt, F])`` (one extractor pass while training)."""
        return encode_sets(self.features, batch)

    def prototypes(self, h: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, K: int) -> torch.Tensor:
        """Class means of features ``[T, K, F]`` (the prior mean for a class without a point)."""
        means, counts = class_means(h, y, mask, K)
        return torch.where(counts[..., None] > 0, means, self.prior_loc.expand_as(means))

    def logits(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``-||h - c_k||^2``: ``h [T, N, F]``, ``c [..., T, K, F]`` -> ``[..., T, N, K]``."""
        return -squared_distances(h, c)

    # ------------------------------------------------------------------ Pyro
    def model(self, batch: TaskBatch) -> None:
        """``c_tk ~ N(m, diag(s^2))`` ([T, 1, K, F]); ``y ~ Categorical(softmax(-||h(x) - c_k||^2))`` ([T, N])."""
        K = self.check(batch)
        h = dict(zip(SPLITS, self.encode_batch(batch)))
        prior = dist.Normal(
            self.prior_loc.expand(K, self.feature_dim), self.prior_log_scale.exp().expand(K, self.feature_dim)
        ).to_event(2)
        with task_plate(batch):
            c = pyro.sample("prototypes", prior).squeeze(-3)  # [..., T, K, F]
            for split in SPLITS:
                observe(batch, lambda x, s=split: dist.Categorical(logits=self.logits(h[s], c)), splits=(split,))

    def guide(self, batch: TaskBatch) -> None:
        """``q(c_t | context_t) = delta(class means of h(context))``: Snell et al.'s prototypes."""
        K = self.check(batch)
        hc = self.features(batch.context_x, batch.context_mask)
        c = self.prototypes(hc, batch.context_y, batch.context_mask, K)
        with task_plate(batch):
            pyro.sample("prototypes", dist.Delta(c.unsqueeze(-3), event_dim=2))

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """ProtoNet cross-entropy ``-mean_{t, n in target} log softmax(-||h(x_tn) - c_tk||^2)_{y_tn}`` (+ a zero-valued prior fit)."""
        K = self.check(batch)
        if batch.target_y is None or batch.num_points("target") == 0:
            raise ValueError("batch: ProtoNet's meta-objective needs observed target points (target_y)")
        hc, ht = self.encode_batch(batch)
        c = self.prototypes(hc, batch.context_y, batch.context_mask, K)
        lsm = torch.log_softmax(self.logits(ht, c), -1)
        nll = -torch.gather(lsm, -1, batch.target_y.clamp(0, K - 1)[..., None])[..., 0]
        m = batch.target_mask.to(nll.dtype)
        ce = ((nll * m).sum(-1) / m.sum(-1).clamp_min(1)).mean()
        return ce + self._prior_fit(hc.detach(), batch, K)

    def _prior_fit(self, hc: torch.Tensor, batch: TaskBatch, K: int) -> torch.Tensor:
        """Zero-valued term whose gradient fits ``N(m, diag(s^2))`` to the context prototypes by maximum likelihood."""
        means, counts = class_means(hc, batch.context_y, batch.context_mask, K)
        real = counts > 0
        if not bool(real.any()):
            return hc.new_zeros(())
        lp = dist.Normal(self.prior_loc, self.prior_log_scale.exp()).log_prob(means[real]).sum(-1)
        nll = -lp.mean() / self.feature_dim
        return nll - nll.detach()

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, num_classes={self.num_classes}"
