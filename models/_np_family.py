"""The model, guide and loss shared by the Neural Process family (ConditionalNP, AttentiveNP, TransformerNP).

Each member computes a deterministic representation ``h_tn = h(x_tn; C_t)`` of a target input given the
task's context set ``C_t`` (a mean-pooled embedding, cross-attention, a transformer); the targets'
representations are independent of each other given the context. On top of it, a Gaussian head::

    conditional form (no task latent):   y_tn ~ N(mu(h_tn), sigma(h_tn)^2)                  target points only
    latent form:  z_t ~ N(0, I_D),       y_tn ~ N(mu(h_tn, z_t), sigma(h_tn, z_t)^2)         context and target

with ``sigma = min_std + (1 - min_std) softplus(.)``. The latent form's amortized guide is a set encoder
``q(z_t | D_t) = N(m(D_t), diag s(D_t)^2)`` over the observed points (context and target while meta-training,
the context at inference), as in ``NeuralProcess``; it observes the context points too (the NP convention:
``p(z_t | C_t)`` is then a proper posterior that NUTS can sample).

Meta-training losses (``loss``), per task, without a Pyro trace (the hot loop; the tests check them against
the Pyro ``model``/``guide``):

* conditional: ``"ml"``, ``-sum_{n in T_t} log p(y_tn | x_tn, C_t)`` -- exactly ``-log p`` of the ``model`` trace;
* latent: ``"elbo"``, ``KL(q(z | C, T) || N(0, I)) - E_q log p(y_{C+T} | z)`` (``TraceMeanField_ELBO``), or
  ``"np"``, the NP paper's ``KL(q(z | C, T) || q(z | C)) - E_q log p(y_{C+T} | z)``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import kl_divergence
from torch.nn.functional import softplus

from pyro_meta.data.batch import TaskBatch
from pyro_meta.model import MetaModel, check_batch, observe, task_plate
from pyro_meta.nn import SetEncoder
from pyro_meta.nn.mlp import MODULE_ACTIVATIONS, module_mlp

from .neural_process import OBJECTIVES, _cat_broadcast

__all__ = ["NPFamilyModel"]

CONDITIONAL_OBJECTIVE = "ml"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _widths(hidden: Union[int, Sequence[int]], num_layers: int) -> list:
    _positive_int("num_layers", num_layers)
    widths = [hidden] * num_layers if isinstance(hidden, int) and not isinstance(hidden, bool) else list(hidden)
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"hidden must be a positive int or a non-empty sequence of them, got {hidden!r}")
    return widths


class NPFamilyModel(MetaModel):
    """Base class: subclasses set up their networks, then call :meth:`_build_head`, and implement

    * ``encode_context(batch) -> state`` -- whatever the representation needs from the context set,
      computed once per call;
    * ``features(state, x [T, N, Dx]) -> h [T, N, F]`` -- the representation of each input given the context.
    """

    def _setup(
        self,
        x_dim: int,
        y_dim: int,
        latent: bool,
        latent_dim: int,
        objective: Optional[str],
        min_std: float,
        min_latent_std: float,
        activation: str,
    ) -> None:
        _positive_int("x_dim", x_dim)
        _positive_int("y_dim", y_dim)
        _positive_int("latent_dim", latent_dim)
        if not isinstance(latent, bool):
            raise TypeError(f"latent must be a bool, got {latent!r}")
        allowed = OBJECTIVES if latent else (CONDITIONAL_OBJECTIVE,)
        objective = allowed[0] if objective is None else objective
        if objective not in allowed:
            raise ValueError(f"objective must be one of {allowed} for latent={latent}, got {objective!r}")
        if not 0 < min_std < 1:
            raise ValueError(f"min_std must be in (0, 1), got {min_std}")
        if not min_latent_std >= 0:
            raise ValueError(f"min_latent_std must be >= 0, got {min_latent_std}")
        if activation not in MODULE_ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(MODULE_ACTIVATIONS)}, got {activation!r}")
        self.x_dim, self.y_dim = x_dim, y_dim
        self.latent, self.latent_dim = latent, latent_dim if latent else 0
        self.objective = objective
        self.min_std, self.min_latent_std = float(min_std), float(min_latent_std)
        self.activation = activation

    def _build_head(
        self,
        feature_dim: int,
        widths: Sequence[int],
        latent_widths: Sequence[int],
        num_self_attention: int = 0,
        num_heads: int = 4,
    ) -> None:
        """Decoder ``[h, z] -> (mu, raw sigma)`` and, for the latent form, the guide's set encoder."""
        self.feature_dim = feature_dim
        self.decoder = module_mlp([feature_dim + self.latent_dim] + list(widths) + [2 * self.y_dim], self.activation)
        self.latent_encoder = (
            SetEncoder(
                self.x_dim + self.y_dim,
                list(latent_widths),
                2 * self.latent_dim,
                pooling="mean",
                num_self_attention=num_self_attention,
                num_heads=num_heads,
                activation=self.activation,
            )
            if self.latent
            else None
        )

    # ------------------------------------------------------------------ to implement
    def encode_context(self, batch: TaskBatch) -> Any:
        raise NotImplementedError

    def features(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ networks
    def encode(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> dist.Distribution:
        """``q(z | D) = Normal(m [T, D], s [T, D]).to_event(1)``.

        From the points ``x [T, N, Dx]``, ``y [T, N, Dy]`` and their ``mask [T, N]`` (latent form only).
        """
        if self.latent_encoder is None:
            raise ValueError(f"{type(self).__name__}(latent=False) has no latent path")
        loc, raw = self.latent_encoder(torch.cat([x, y], -1), mask).chunk(2, -1)
        return dist.Normal(loc, self.min_latent_std + softplus(raw)).to_event(1)

    def decode(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> dist.Distribution:
        """``p(y | h[, z]) = Normal(mu, sigma).to_event(1)``, batch shape ``[..., T, N]``, event ``[Dy]``.

        ``h [T, N, F]`` (the representation), ``z [..., T, 1, D]`` (latent form); leading draw dims broadcast.
        """
        inputs = h if z is None else _cat_broadcast(h, z)
        loc, raw = self.decoder(inputs).chunk(2, -1)
        return dist.Normal(loc, self.min_std + (1.0 - self.min_std) * softplus(raw)).to_event(1)

    def _check(self, batch: TaskBatch) -> TaskBatch:
        check_batch(batch)
        if batch.is_classification or batch.x_dim != self.x_dim or batch.y_dim != self.y_dim:
            raise ValueError(
                f"{type(self).__name__}(x_dim={self.x_dim}, y_dim={self.y_dim}) takes regression batches "
                f"x [T, N, {self.x_dim}], y [T, N, {self.y_dim}]; got x_dim={batch.x_dim}, y_dim={batch.y_dim}"
                + (" (class labels)" if batch.is_classification else "")
            )
        return batch

    def _split_features(self, batch: TaskBatch) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> h`` for the batch's inputs, the context and target sets encoded in one pass (one context encoding)."""
        state = self.encode_context(batch)
        cache = {}
        splits = [s for s in ("context", "target") if batch.num_points(s) > 0 and (self.latent or s == "target")]
        if len(splits) == 2:
            h = self.features(state, torch.cat([batch.context_x, batch.target_x], 1))
            nc = batch.num_points("context")
            cache = {id(batch.context_x): h[..., :nc, :], id(batch.target_x): h[..., nc:, :]}

        def feats(x: torch.Tensor) -> torch.Tensor:
            hit = cache.get(id(x))
            return hit if hit is not None else self.features(state, x)

        return feats

    # ------------------------------------------------------------------ Pyro
    def model(self, batch: TaskBatch) -> None:
        """Latent form: ``z_t ~ N(0, I)`` ([T, 1, D]), ``y ~ N(mu(h, z), sigma(h, z)^2)`` at context and target;
        conditional form: ``y_target ~ N(mu(h), sigma(h)^2)`` ([T, Nt, Dy]) with ``h = h(x; C)``."""
        self._check(batch)
        feats = self._split_features(batch)
        with task_plate(batch):
            if not self.latent:
                observe(batch, lambda x: self.decode(feats(x)), splits=("target",))
                return
            prior = dist.Normal(batch.context_x.new_zeros(self.latent_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            observe(batch, lambda x: self.decode(feats(x), z))

    def guide(self, batch: TaskBatch) -> None:
        """Latent form: ``q(z_t | observed_t) = N(m(D_t), diag s(D_t)^2)``, ``D_t = batch.observed()``; else nothing."""
        self._check(batch)
        if not self.latent:
            return
        q = self.encode(*batch.observed())
        with task_plate(batch):
            pyro.sample("z", dist.Normal(q.base_dist.loc[:, None], q.base_dist.scale[:, None]).to_event(1))

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """Per-task meta-training loss (module docstring), averaged over tasks; ``num_particles`` draws of ``z``."""
        self._check(batch)
        state = self.encode_context(batch)
        if not self.latent:
            if batch.target_y is None or batch.num_points("target") == 0:
                raise ValueError(f"{type(self).__name__}.loss needs observed targets (batch.target_y [T, Nt, Dy])")
            p = self.decode(self.features(state, batch.target_x))
            return -(p.log_prob(batch.target_y) * batch.target_mask.to(batch.target_y.dtype)).sum(-1).mean()
        x, y, mask = batch.observed()
        q = self.encode(x, y, mask)  # [T] x [D]
        if self.objective == "elbo":
            reference = dist.Normal(torch.zeros_like(q.base_dist.loc), 1.0).to_event(1)
        else:
            reference = self.encode(batch.context_x, batch.context_y, batch.context_mask)
        particles = int(self.num_particles)
        z = q.rsample((particles,) if particles > 1 else ())  # [(P,) T, D]
        log_lik = (self.decode(self.features(state, x), z[..., None, :]).log_prob(y) * mask.to(y.dtype)).sum(-1)
        if particles > 1:
            log_lik = log_lik.mean(0)
        return (kl_divergence(q, reference) - log_lik).mean()

    def extra_repr(self) -> str:
        latent = f"latent_dim={self.latent_dim}" if self.latent else "latent=False"
        return f"{latent}, objective={self.objective!r}, min_std={self.min_std}, activation={self.activation!r}"
