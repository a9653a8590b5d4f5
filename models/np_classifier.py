"""``NeuralProcessClassifier``: a Neural Process for few-shot classification with per-class latents (VERSA-style).

Model (``T`` tasks, ``K`` classes, features ``h(x) [F]`` of a shared extractor, ``a(x) = [h(x), 1]``)::

    z_tk ~ N(0, I_D)                                   # task latent "z": one per class, [T, 1, K, D]
    w_tk = g(z_tk, r_tk)                               # decoder (weight generator) -> R^{F+1}
    y_tn ~ Categorical(softmax_k(w_tk . a(x_tn)))      # long labels [T, N]

with ``r_tk = [e_tk, ||e_tk||^2]`` the deterministic path (as a Neural Process's ``r_C``; off with
``deterministic_path=False``): ``e_tk`` the mean context feature of class ``k``. The generator is an MLP
plus a linear skip of ``[z_tk, r_tk]``, so it can represent the prototype classifier
``w_k = [2 e_k, -||e_k||^2]`` exactly and the latent carries what the context leaves uncertain; it starts
there (the MLP's last layer zero, ``z`` entering with small weights), and the guide at ``N(0, I)``.

Guide (amortized, VERSA's per-class amortization, Gordon et al. 2019): the context features of each class
are mean-pooled, ``e_tk``, and one MLP shared by the classes maps ``[e_tk, log(1 + n_tk)]`` to
``q(z_tk | context) = N(m(e_tk), diag(s(e_tk)^2))`` (:class:`~pyro_meta.models._features.ClassGaussianEncoder`),
so the model is label-permutation equivariant and one trained model serves any way ``K`` (``num_classes``
or each batch's way). Compared with :class:`~pyro_meta.models.BayesianLastLayer` (a linear head whose
weights are the latent, with a learned Gaussian prior), the latent here is a low-dimensional code with a
fixed ``N(0, I)`` prior, decoded to classifier weights by a learned nonlinear generator, as in a Neural
Process (its decoder is the generator and the linear read-out).

Meta-objectives:

* ``objective="elbo"`` (default): ``KL(q(z_t | C_t) || N(0, I)) - E_q log p(y_{C+T} | x, z_t)`` per task, the
  guide given the context only (a valid ELBO of every observed point whose guide is the test-time one),
  so ``infer(method="nuts")`` samples the exact posterior of the trained model;
* ``objective="versa"``: VERSA's amortized predictive objective (ML-PIP),
  ``-mean_{n in target} log (1/L) sum_l p(y_tn | x_tn, z_l)``, ``z_l ~ q(z_t | C_t)``, which trains the
  predictive directly but not the ``N(0, I)`` prior (exact inference is then only as good as that match).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_meta.data.batch import SPLITS, TaskBatch
from pyro_meta.model import MetaModel, observe, task_plate
from pyro_meta.nn.mlp import module_mlp

from ._features import (
    ClassGaussianEncoder,
    FeatureExtractor,
    check_labelled_batch,
    check_versa_targets,
    class_means,
    encode_sets,
    versa_loss,
)

__all__ = ["NeuralProcessClassifier"]

OBJECTIVES = ("elbo", "versa")


class NeuralProcessClassifier(MetaModel):
    """Neural Process classifier: per-class latents ``z_tk ~ N(0, I_D)``, decoded to per-class linear weights.

    Parameters
    ----------
    backbone : "conv4" | "mlp"
        Shared extractor: Conv-4 on flattened images (``image_shape``) or an MLP on ``x [T, N, x_dim]``.
    image_shape, x_dim, channels, hidden, feature_dim, test_shifts :
        Extractor options (see :class:`~pyro_meta.models._features.FeatureExtractor`).
    latent_dim : int
        ``D``, the size of each class's latent.
    deterministic_path : bool
        Feed each class's mean context feature to the weight generator as well (see the module doc).
    decoder_hidden, guide_hidden : int
        Widths of the weight generator ``g`` and of the guide's MLP.
    num_classes : int, optional
        ``K`` (default: each batch's way).
    objective : "elbo" | "versa"
        Meta-training loss (module docstring).
    num_particles : int
        Draws of ``z_t`` per task in :meth:`loss`.
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
        latent_dim: int = 8,
        deterministic_path: bool = True,
        decoder_hidden: int = 64,
        guide_hidden: int = 64,
        num_classes: Optional[int] = None,
        objective: str = "elbo",
        num_particles: int = 1,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        for name, value in (
            ("latent_dim", latent_dim),
            ("decoder_hidden", decoder_hidden),
            ("guide_hidden", guide_hidden),
            ("num_particles", num_particles),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise ValueError(f"num_classes must be an int >= 2 or None (each batch's way), got {num_classes!r}")
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
        self.feature_dim, self.latent_dim = F, latent_dim
        self.num_classes, self.objective, self.num_particles = num_classes, objective, num_particles
        self.deterministic_path = bool(deterministic_path)
        dec_in = latent_dim + (F + 1 if self.deterministic_path else 0)
        self.decoder = module_mlp([dec_in, decoder_hidden, decoder_hidden, F + 1], "relu")
        self.decoder_skip = nn.Linear(dec_in, F + 1)
        self.encoder = ClassGaussianEncoder(F, latent_dim, hidden=guide_hidden, init_scale=1.0)
        with torch.no_grad():  # start at the prototype classifier of the deterministic path, z with a small weight
            self.decoder[-1].weight.zero_()
            self.decoder[-1].bias.zero_()
            self.decoder_skip.weight.mul_(0.1)
            self.decoder_skip.bias.zero_()
            if self.deterministic_path:
                self.decoder_skip.weight[:, latent_dim:] = 0.0
                self.decoder_skip.weight[:F, latent_dim : latent_dim + F] = 2 * torch.eye(F)
                self.decoder_skip.weight[F, latent_dim + F] = -1.0

    # ------------------------------------------------------------------ pieces
    def check(self, batch: TaskBatch) -> int:
        """``K`` of this batch; ``TypeError``/``ValueError`` unless it is a classification batch of the right inputs."""
        return check_labelled_batch(self, batch)

    def encode_batch(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features ``(h_context [T, Nc, F], h_target [T, Nt, F])`` (one extractor pass while training)."""
        return encode_sets(self.features, batch)

    def path(self, h_context: torch.Tensor, batch: TaskBatch, K: int) -> Optional[torch.Tensor]:
        """The deterministic path ``r_tk = [e_tk, ||e_tk||^2]`` ``[T, K, F+1]`` (None without it)."""
        if not self.deterministic_path:
            return None
        e, _ = class_means(h_context, batch.context_y, batch.context_mask, K)
        return torch.cat([e, (e * e).sum(-1, keepdim=True)], -1)

    def weights(self, z: torch.Tensor, r: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class weights ``g(z_k, r_k) [..., T, K, F+1]`` from ``z [..., T, K, D]`` and ``r [T, K, F+1]``."""
        if r is not None:
            z = torch.cat([z, r.expand(z.shape[:-1] + r.shape[-1:])], -1)
        return self.decoder(z) + self.decoder_skip(z)

    def logits(self, h: torch.Tensor, z: torch.Tensor, r: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``g(z_k, r_k) . [h(x), 1]``: ``h [T, N, F]``, ``z [..., T, K, D]`` -> ``[..., T, N, K]``."""
        w = self.weights(z, r)  # [..., T, K, F+1]
        return h @ w[..., :-1].transpose(-1, -2) + w[..., -1].unsqueeze(-2)

    def posterior_params(
        self, batch: TaskBatch, h_context: Optional[torch.Tensor] = None, K: Optional[int] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of ``q(z_t | context_t)``, each ``[T, K, D]``."""
        K = self.check(batch) if K is None else K
        if h_context is None:
            h_context = self.features(batch.context_x, batch.context_mask)
        means, counts = class_means(h_context, batch.context_y, batch.context_mask, K)
        return self.encoder(means, counts)

    # ------------------------------------------------------------------ Pyro
    def model(self, batch: TaskBatch) -> None:
        """``z_tk ~ N(0, I)`` ([T, 1, K, D]); ``y ~ Categorical(softmax_k(g(z_tk) . [h(x), 1]))`` ([T, N])."""
        K = self.check(batch)
        h = dict(zip(SPLITS, self.encode_batch(batch)))
        r = self.path(h["context"], batch, K)
        prior = dist.Normal(batch.context_x.new_zeros(K, self.latent_dim), 1.0).to_event(2)
        with task_plate(batch):
            z = pyro.sample("z", prior).squeeze(-3)  # [..., T, K, D]
            for split in SPLITS:
                observe(batch, lambda x, s=split: dist.Categorical(logits=self.logits(h[s], z, r)), splits=(split,))

    def guide(self, batch: TaskBatch) -> None:
        """``q(z_tk | context_t) = N(m(e_tk), diag(s(e_tk)^2))`` from each class's mean context feature ``e_tk``."""
        loc, scale = self.posterior_params(batch)
        with task_plate(batch):
            pyro.sample("z", dist.Normal(loc.unsqueeze(-3), scale.unsqueeze(-3)).to_event(2))

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """The meta-objective per task (``objective``: the negative ELBO, or VERSA's predictive loss per target point)."""
        K = self.check(batch)
        hc, ht = self.encode_batch(batch)
        loc, scale = self.posterior_params(batch, hc, K)
        S = self.num_particles
        z = loc + scale * torch.randn((S,) + tuple(loc.shape), dtype=loc.dtype, device=loc.device)  # [S, T, K, D]
        r = self.path(hc, batch, K)
        if self.objective == "versa":
            check_versa_targets(batch)
            lp = torch.distributions.Categorical(logits=self.logits(ht, z, r)).log_prob(batch.target_y)  # [S, T, Nt]
            return versa_loss(lp, batch)
        kl = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(torch.zeros_like(loc), 1.0))
        log_lik = 0.0
        for split, h in (("context", hc), ("target", ht)):
            y = batch.y(split)
            if y is None or batch.num_points(split) == 0:
                continue
            lp = torch.distributions.Categorical(logits=self.logits(h, z, r)).log_prob(y)  # [S, T, N]
            log_lik = log_lik + (lp * batch.mask(split).to(lp.dtype)).sum(-1).mean(0)
        return (kl.sum((-1, -2)) - log_lik).mean()

    def extra_repr(self) -> str:
        return (
            f"feature_dim={self.feature_dim}, latent_dim={self.latent_dim}, num_classes={self.num_classes}, "
            f"objective={self.objective!r}"
        )
