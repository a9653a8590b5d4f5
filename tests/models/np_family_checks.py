"""Checks shared by the Neural Process family's tests (ConditionalNP, AttentiveNP, TransformerNP)."""

import pyro
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_meta.data import Sinusoid, TaskBatch
from pyro_meta.testing import assert_close


def ragged_batch(T=3, seed=0, nc=(1, 4), nt=(2, 5)) -> TaskBatch:
    """Noisy sinusoid tasks with ragged context and target sets."""
    return Sinusoid(noise_std=0.1).sample(T, nc, nt, generator=torch.Generator().manual_seed(seed))


def seeded_loss(model, batch, seed=1) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return model.loss(batch)


def assert_loss_is_the_pyro_objective(model, batch):
    """Conditional form: ``loss = -log p(model trace) / T``; latent ``"elbo"``: ``TraceMeanField_ELBO / T``
    on the same draw; latent ``"np"``: ``KL(q(z|C,T) || q(z|C)) - log p(y | z)`` on that draw."""
    T = batch.num_tasks
    loss = seeded_loss(model, batch)
    if not model.latent:
        tr = poutine.trace(model.model).get_trace(batch)
        assert "z" not in tr.nodes and "y_context" not in tr.nodes and tr.nodes["y_target"]["is_observed"]
        assert_close(loss, -tr.log_prob_sum() / T, atol=1e-4, rtol=1e-5, what="ml loss vs the model's log density")
        return
    if model.objective == "elbo":
        pyro.set_rng_seed(1)
        expected = TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch) / T
    else:
        q = model.encode(*batch.observed())
        q_c = model.encode(batch.context_x, batch.context_y, batch.context_mask)
        pyro.set_rng_seed(1)
        z = q.rsample()[:, None]
        tr = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(batch)
        tr.compute_log_prob()
        log_lik = sum(tr.nodes[s]["log_prob"].sum(-1) for s in ("y_context", "y_target"))
        expected = (kl_divergence(q, q_c) - log_lik).mean()
    assert_close(loss, expected, atol=1e-4, rtol=1e-5, what=f"{model.objective} loss vs Pyro")


def _padded(batch: TaskBatch, extra: int = 2, value: float = 7.0) -> TaskBatch:
    """The same tasks with ``extra`` padded points (wild values) appended to both sets."""
    T = batch.num_tasks

    def pad(x, m):
        filler = torch.full((T, extra, x.shape[-1]), value)
        return torch.cat([x, filler], 1), torch.cat([m, torch.zeros(T, extra, dtype=torch.bool)], 1)

    cx, cm = pad(batch.context_x, batch.context_mask)
    cy, _ = pad(batch.context_y, batch.context_mask)
    tx, tm = pad(batch.target_x, batch.target_mask)
    ty, _ = pad(batch.target_y, batch.target_mask)
    return TaskBatch(cx, cy, tx, ty, cm, tm, dict(batch.info))


def assert_padding_and_order_change_nothing(model, batch):
    """Padded points (masked) and a permutation of the context set leave the loss and the predictive unchanged."""
    model.eval()
    base = seeded_loss(model, batch)
    assert_close(seeded_loss(model, _padded(batch)), base, atol=1e-4, rtol=1e-5, what="loss with padding")
    perm = torch.randperm(batch.context_x.shape[1], generator=torch.Generator().manual_seed(5))
    shuffled = batch.replace(
        context_x=batch.context_x[:, perm], context_y=batch.context_y[:, perm], context_mask=batch.context_mask[:, perm]
    )
    state, state_s = model.encode_context(batch), model.encode_context(shuffled)
    h, h_s = model.features(state, batch.target_x), model.features(state_s, batch.target_x)
    assert_close(h_s[batch.target_mask], h[batch.target_mask], atol=1e-5, what="features, permuted context")
    h_p = model.features(model.encode_context(_padded(batch)), batch.target_x)
    assert_close(h_p[batch.target_mask], h[batch.target_mask], atol=1e-5, what="features, padded context")


def assert_broadcasts_over_draws(model, batch, num_draws=7):
    """Under a draws plate the latent is ``[S, T, 1, D]`` and ``y_target`` ``[S, T, Nt, Dy]``; context-only runs."""
    T, Nt = batch.target_x.shape[:2]
    with pyro.plate("_draws", num_draws, dim=-3):
        tr = poutine.trace(model.model).get_trace(batch.without_target_y())
    assert tr.nodes["y_target"]["value"].shape == (num_draws, T, Nt, batch.y_dim)
    if model.latent:
        assert tr.nodes["z"]["value"].shape == (num_draws, T, 1, model.latent_dim)
        # draws of the latent give different predictive means; the deterministic path is shared
        mu = tr.nodes["y_target"]["fn"].base_dist.loc
        assert not torch.allclose(mu[0], mu[1])
    tr = poutine.trace(model.model).get_trace(batch.context_only())
    assert "y_target" not in tr.nodes
    assert ("y_context" in tr.nodes) == model.latent
