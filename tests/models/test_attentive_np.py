"""AttentiveNP: the contract in its latent and conditional forms, losses against Pyro, attention closed forms."""

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_meta.models import AttentiveNP
from pyro_meta.testing import MetaModelContract, assert_close

from .np_family_checks import (
    assert_broadcasts_over_draws,
    assert_loss_is_the_pyro_objective,
    assert_padding_and_order_change_nothing,
    ragged_batch,
)


class TestAttentiveNPContract(MetaModelContract):
    def make_model(self):
        return AttentiveNP(hidden=8, num_heads=2, num_self_attention=1, latent_dim=3)


class TestAttentiveNPConditionalContract(MetaModelContract):
    has_task_latent = False

    def make_model(self):
        return AttentiveNP(hidden=8, num_heads=2, num_self_attention=1, latent=False)


@pytest.mark.parametrize("kwargs", [dict(), dict(objective="np"), dict(latent=False)])
def test_loss_padding_and_draws(kwargs):
    torch.manual_seed(0)
    model = AttentiveNP(hidden=(8, 8), num_heads=2, latent_dim=3, **kwargs)
    batch = ragged_batch()
    assert_loss_is_the_pyro_objective(model, batch)
    assert_padding_and_order_change_nothing(model, batch)
    assert_broadcasts_over_draws(model, batch)


def test_elbo_loss_with_particles_and_objectives_differ():
    torch.manual_seed(0)
    model = AttentiveNP(hidden=8, num_heads=2, latent_dim=3)
    batch = ragged_batch()
    model.num_particles = 3
    pyro.set_rng_seed(4)
    loss = model.loss(batch)
    pyro.set_rng_seed(4)
    expected = (
        TraceMeanField_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=2).differentiable_loss(
            model.model, model.guide, batch
        )
        / batch.num_tasks
    )
    assert_close(loss, expected, atol=1e-4, what="3-particle ELBO")
    other = AttentiveNP(hidden=8, num_heads=2, latent_dim=3, objective="np")
    other.load_state_dict(model.state_dict())
    pyro.set_rng_seed(4)
    assert abs(float(other.loss(batch).detach()) - float(loss.detach())) > 1e-3


def test_cross_attention_to_one_context_point_is_its_value():
    """With one real context point the attention weights are 1: ``r*(x) = W_o (W_v v + b_v) + b_o`` for every x."""
    torch.manual_seed(0)
    model = AttentiveNP(hidden=8, num_heads=2, num_self_attention=1, latent=False)
    batch = ragged_batch(T=2, nc=3, nt=4)
    cm = torch.zeros_like(batch.context_mask)
    cm[:, 1] = True
    one = batch.replace(context_mask=cm)
    keys, values, mask = model.encode_context(one)
    att = model.cross_attention
    expected = att.out_proj(att.v_proj(values[:, 1:2]))  # [T, 1, H]
    h = model.features((keys, values, mask), batch.target_x)
    assert_close(h[..., 1:], expected.expand(-1, 4, -1), atol=1e-5, what="attention to one point")
    assert_close(h[..., :1], batch.target_x, atol=0.0, what="x is passed through")
    # and self-attention over a one-point context sees only that point: other (padded) values do not matter
    v_alone = model.value_encoder(torch.cat([one.context_x[:, 1:2], one.context_y[:, 1:2]], -1))
    v_alone = model.self_attention[0](v_alone)
    assert_close(values[:, 1:2], v_alone, atol=1e-5, what="self-attention on one point")


def test_validation():
    with pytest.raises(ValueError, match="num_heads"):
        AttentiveNP(hidden=6, num_heads=4)
    with pytest.raises(ValueError, match="objective"):
        AttentiveNP(latent=False, objective="elbo")
    with pytest.raises(ValueError, match="objective"):
        AttentiveNP(objective="ml")
    with pytest.raises(ValueError, match="num_self_attention"):
        AttentiveNP(num_self_attention=-1)
    with pytest.raises(TypeError, match="latent"):
        AttentiveNP(latent=1)
    with pytest.raises(ValueError, match="no latent path"):
        b = ragged_batch()
        AttentiveNP(latent=False).encode(b.context_x, b.context_y, b.context_mask)
