"""``NeuralProcess``: the latent Neural Process (Garnelo et al. 2018) as a Pyro model and guide.

Model (per task ``t``; decoder weights ``theta`` meta-learned, point estimates)::

    z_t ~ N(0, I)                                                   # task latent, [T, 1, D]
    y_tn ~ N(mu_theta(x_tn, z_t[, r_C]), sigma_theta(x_tn, z_t[, r_C])^2)   # [T, N, Dy]

with ``sigma = min_std + (1 - min_std) softplus(.)`` (a learned heteroscedastic scale bounded
below) and, with ``deterministic_path=True``, ``r_C`` the masked mean of a per-point embedding of
the task's context set fed to the decoder as well. The amortized guide is a masked mean-pooled
set encoder ``q(z_t | D) = N(m_phi(D), diag s_phi(D)^2)`` over the observed points ``D``
(``batch.observed()``: context and target while meta-training, the context only at inference).

Two meta-training objectives:

* ``objective="elbo"`` (default): ``-ELBO = E_q[-log p(y_{C+T} | x, z)] + KL(q(z | C, T) || N(0, I))``,
  a proper generative model, so ``infer(..., method="nuts")`` samples the exact posterior
  ``p(z_t | context_t)`` of the trained model;
* ``objective="np"``: the NP paper's ``E_q[-log p(y_{C+T} | x, z)] + KL(q(z | C, T) || q(z | C))``
  (the conditional prior ``q(z | C)`` replaces ``N(0, I)``). ``model`` keeps the ``N(0, I)`` prior,
  which this objective does not train the decoder against: exact inference in it is then only
  as good as ``N(0, I)`` is a match for the encoder's aggregate posterior.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import kl_divergence
from torch.nn.functional import softplus

from pyro_meta.data.batch import TaskBatch
from pyro_meta.guides import FlowHead, MixtureHead
from pyro_meta.model import MetaModel, check_batch, observe, task_plate
from pyro_meta.nn import masked_mean

__all__ = ["NeuralProcess"]

OBJECTIVES = ("elbo", "np")
GUIDES = ("normal", "mixture", "flow")


ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """``Linear -> activation -> ... -> Linear`` over the last dim."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _cat_broadcast(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last dim after broadcasting every other dim (``[S, T, 1, D]`` with ``[T, N, Dx]``)."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], -1)


class NeuralProcess(MetaModel):
    """Latent Neural Process with a mean-pooled set encoder and an optional deterministic path.

    Parameters
    ----------
    x_dim, y_dim : int
        Input and output sizes ``Dx``, ``Dy``.
    latent_dim : int
        Size ``D`` of the task latent ``z_t ~ N(0, I_D)``.
    hidden : int or sequence of int
        Widths of the hidden layers of every network (an int means ``num_layers`` layers of it).
    num_layers : int
        Hidden layers per network when ``hidden`` is an int.
    deterministic_path : bool
        Also feed ``r_C`` (mean-pooled embedding of the context, ``[T, 1, H]``) to the decoder.
    objective : "elbo" | "np"
        Meta-training loss (see the module docstring).
    min_std : float
        Lower bound of the decoder's scale ``sigma = min_std + (1 - min_std) softplus(.)``.
    min_latent_std : float
        Lower bound of the encoder's scale ``s = min_latent_std + softplus(.)``.
    activation : "silu" | "relu" | "tanh" | "gelu"
        Nonlinearity of every network. The default SiLU makes ``log p(y | x, z)`` smooth in ``z``:
        on noisy sinusoids NUTS over ``z`` then needed about half the leapfrog steps per draw of
        the same model with ReLU (whose log density has kinks), and the ELBO trained better.
    guide : "normal" | "mixture" | "flow"
        The family of the amortized guide ``q(z_t | D_t)``, a head on the mean-pooled embedding of
        ``D_t`` (:mod:`pyro_meta.guides`): a diagonal Normal (default; its KL is in closed form), a
        mixture of ``num_components`` diagonal Gaussians (:class:`~pyro_meta.guides.MixtureHead`) or a
        conditional spline flow of ``flow_layers`` layers (:class:`~pyro_meta.guides.FlowHead`). The
        last two can represent multimodal posteriors (ambiguous tasks); their KL is a Monte Carlo
        estimate ``log q(z) - log p(z)`` at the reparameterised draws.
    num_components, flow_layers : int
        Options of the mixture and flow guides.
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        latent_dim: int = 16,
        hidden: Union[int, Sequence[int]] = 64,
        num_layers: int = 2,
        deterministic_path: bool = False,
        objective: str = "elbo",
        min_std: float = 0.01,
        min_latent_std: float = 1e-3,
        activation: str = "silu",
        guide: str = "normal",
        num_components: int = 4,
        flow_layers: int = 3,
    ) -> None:
        super().__init__()
        if guide not in GUIDES:
            raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        for name, value in (("x_dim", x_dim), ("y_dim", y_dim), ("latent_dim", latent_dim), ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        widths = [hidden] * num_layers if isinstance(hidden, int) else list(hidden)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"hidden must be a positive int or a non-empty sequence of them, got {hidden!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not 0 < min_std < 1:
            raise ValueError(f"min_std must be in (0, 1), got {min_std}")
        self.x_dim, self.y_dim, self.latent_dim = x_dim, y_dim, latent_dim
        self.deterministic_path = bool(deterministic_path)
        self.objective = objective
        self.min_std, self.min_latent_std = float(min_std), float(min_latent_std)
        self.activation = activation
        H = widths[-1]
        # guide: per-point embedding h([x, y]), masked mean, then (m, s) of q(z | D)
        self.latent_encoder = _mlp([x_dim + y_dim] + widths, activation)
        self.guide_family = guide
        if guide == "normal":
            self.latent_head = _mlp([H, H, 2 * latent_dim], activation)
        elif guide == "mixture":
            self.latent_head = MixtureHead(H, latent_dim, num_components=num_components, hidden=(H,))
        else:
            self.latent_head = FlowHead(H, latent_dim, num_layers=flow_layers, hidden=(H,))
        # model: optional deterministic path r_C and the decoder
        self.det_dim = H if self.deterministic_path else 0
        self.det_encoder = _mlp([x_dim + y_dim] + widths, activation) if self.deterministic_path else None
        self.decoder = _mlp([x_dim + latent_dim + self.det_dim] + widths + [2 * y_dim], activation)

    # ------------------------------------------------------------------ networks
    def encode(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> dist.Distribution:
        """``q(z | D)``: ``Normal(m [T, D], s [T, D]).to_event(1)`` from points ``x [T, N, Dx]``, ``y [T, N, Dy]``, ``mask [T, N]``.

        The Normal guide only (its closed form); :meth:`posterior` serves every guide family.
        """
        if self.guide_family != "normal":
            raise ValueError(
                f"encode is the Normal guide's; this model has guide={self.guide_family!r}: use posterior()"
            )
        h = masked_mean(self.latent_encoder(torch.cat([x, y], -1)), mask)
        loc, raw = self.latent_head(h).chunk(2, -1)
        return dist.Normal(loc, self.min_latent_std + softplus(raw)).to_event(1)

    def posterior(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> dist.Distribution:
        """``q(z_t | D_t)`` with the task-plate shapes: batch ``[T, 1]``, event ``[D]`` (any guide family)."""
        if self.guide_family == "normal":
            q = self.encode(x, y, mask)
            return dist.Normal(q.base_dist.loc[:, None], q.base_dist.scale[:, None]).to_event(1)
        return self.latent_head(masked_mean(self.latent_encoder(torch.cat([x, y], -1)), mask))

    def deterministic(self, batch: TaskBatch) -> Optional[torch.Tensor]:
        """``r_C [T, 1, H]``: masked mean of ``h([x, y])`` over the context set (``None`` without the path)."""
        if self.det_encoder is None:
            return None
        h = self.det_encoder(torch.cat([batch.context_x, batch.context_y], -1))
        return masked_mean(h, batch.context_mask)[:, None, :]

    def decode(self, x: torch.Tensor, z: torch.Tensor, r: Optional[torch.Tensor] = None) -> dist.Distribution:
        """``p(y | x, z[, r])``: ``Normal(mu, sigma).to_event(1)``, batch ``[..., T, N]``, event ``[Dy]``.

        ``x [T, N, Dx]``, ``z [..., T, 1, D]``, ``r [T, 1, H]``; leading draw dims broadcast.
        """
        inputs = (x, z) if r is None else (x, z, r)
        loc, raw = self.decoder(_cat_broadcast(*inputs)).chunk(2, -1)
        return dist.Normal(loc, self.min_std + (1.0 - self.min_std) * softplus(raw)).to_event(1)

    def _check(self, batch: TaskBatch) -> TaskBatch:
        check_batch(batch)
        if batch.is_classification or batch.x_dim != self.x_dim or batch.y_dim != self.y_dim:
            raise ValueError(
                f"NeuralProcess(x_dim={self.x_dim}, y_dim={self.y_dim}) takes regression batches x [T, N, {self.x_dim}], "
                f"y [T, N, {self.y_dim}]; got x_dim={batch.x_dim}, y_dim={batch.y_dim}"
                + (" (class labels)" if batch.is_classification else "")
            )
        return batch

    # ------------------------------------------------------------------ Pyro
    def model(self, batch: TaskBatch) -> None:
        """``z_t ~ N(0, I)`` ([T, 1, D]); ``y ~ N(mu(x, z[, r_C]), sigma(x, z[, r_C])^2)`` ([T, N, Dy])."""
        self._check(batch)
        r = self.deterministic(batch)
        with task_plate(batch):
            prior = dist.Normal(batch.context_x.new_zeros(self.latent_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            observe(batch, lambda x: self.decode(x, z, r))

    def guide(self, batch: TaskBatch) -> None:
        """``q(z_t | observed_t)`` (Normal: ``N(m(D_t), diag s(D_t)^2)``; or a mixture or a flow), ``D_t = batch.observed()``."""
        self._check(batch)
        q = self.posterior(*batch.observed())
        with task_plate(batch):
            pyro.sample("z", q)

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        """Per-task meta-training loss, one reparameterised ``z_t`` per particle, KL in closed form.

        ``(1/T) sum_t [KL(q(z_t | C_t, T_t) || r_t) - E_q log p(y_{C+T} | x, z_t[, r_C])]`` with
        ``r_t = N(0, I)`` (``"elbo"``: exactly ``-TraceMeanField_ELBO / T`` of ``model``/``guide``, a
        lower-variance ``-ELBO / T``) or ``r_t = q(z_t | C_t)`` (``"np"``). Written without a Pyro
        trace: this is the hot loop of meta-training (``benchmarks/np_overhead.py``); the tests check
        it against Pyro's ``TraceMeanField_ELBO`` on the same draws.
        """
        self._check(batch)
        x, y, mask = batch.observed()
        if self.guide_family != "normal":
            return self._monte_carlo_loss(batch, x, y, mask)
        q = self.encode(x, y, mask)  # [T] x [D]
        if self.objective == "elbo":
            reference = dist.Normal(torch.zeros_like(q.base_dist.loc), 1.0).to_event(1)
        else:
            reference = self.encode(batch.context_x, batch.context_y, batch.context_mask)
        particles = int(self.num_particles)
        z = q.rsample((particles,) if particles > 1 else ())  # [(P,) T, D]
        log_lik = (self.decode(x, z[..., None, :], self.deterministic(batch)).log_prob(y) * mask.to(y.dtype)).sum(-1)
        if particles > 1:
            log_lik = log_lik.mean(0)
        return (kl_divergence(q, reference) - log_lik).mean()

    def _monte_carlo_loss(self, batch: TaskBatch, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The same per-task loss for a mixture or flow guide, its KL estimated at the draws: ``log q(z) - log r(z)``."""
        q = self.posterior(x, y, mask)  # batch [T, 1], event [D]
        if self.objective == "elbo":
            reference = dist.Normal(torch.zeros_like(x[:, :1, :1]).expand(-1, 1, self.latent_dim), 1.0).to_event(1)
        else:
            reference = self.posterior(batch.context_x, batch.context_y, batch.context_mask)
        particles = int(self.num_particles)
        z = q.rsample((particles,))  # [P, T, 1, D]
        kl = (q.log_prob(z) - reference.log_prob(z))[..., 0]  # [P, T]
        log_lik = (self.decode(x, z, self.deterministic(batch)).log_prob(y) * mask.to(y.dtype)).sum(-1)  # [P, T]
        return (kl - log_lik).mean()

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, deterministic_path={self.deterministic_path}, "
            f"objective={self.objective!r}, min_std={self.min_std}, activation={self.activation!r}, "
            f"guide={self.guide_family!r}"
        )
