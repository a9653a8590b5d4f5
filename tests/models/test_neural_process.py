"""NeuralProcess: the contract (both objectives, with and without the deterministic path), shapes and losses."""

import pyro
import pytest
import torch
from pyro import poutine

from pyro_meta.data import Sinusoid
from pyro_meta.models import NeuralProcess
from pyro_meta.testing import MetaModelContract, assert_close


class TestNeuralProcessContract(MetaModelContract):
    def make_model(self):
        return NeuralProcess(latent_dim=4, hidden=16)


class TestNeuralProcessNPObjectiveContract(MetaModelContract):
    """The NP-paper objective with a deterministic path: the same contract, every method."""

    def make_model(self):
        return NeuralProcess(latent_dim=3, hidden=(16, 8), deterministic_path=True, objective="np")


def _batch(T=3, seed=0, nc=(2, 4), nt=5):
    return Sinusoid(noise_std=0.1).sample(T, nc, nt, generator=torch.Generator().manual_seed(seed))


def test_defaults_construct_and_validate():
    model = NeuralProcess()
    assert model.latent_dim > 0 and model.objective == "elbo" and not model.deterministic_path
    with pytest.raises(ValueError, match="objective"):
        NeuralProcess(objective="maml")
    with pytest.raises(ValueError, match="latent_dim"):
        NeuralProcess(latent_dim=0)
    with pytest.raises(ValueError, match="y_dim"):
        NeuralProcess(y_dim=2).model(_batch())


@pytest.mark.parametrize("deterministic_path", [False, True])
def test_model_broadcasts_over_draws_and_runs_context_only(deterministic_path):
    model = NeuralProcess(latent_dim=5, hidden=8, deterministic_path=deterministic_path)
    batch = _batch(T=4)
    with pyro.plate("_draws", 7, dim=-3):
        tr = poutine.trace(model.model).get_trace(batch.without_target_y())
    assert tr.nodes["z"]["value"].shape == (7, 4, 1, 5)
    assert tr.nodes["y_target"]["value"].shape == (7, 4, 5, 1)
    tr = poutine.trace(model.model).get_trace(batch.context_only())
    assert "y_target" not in tr.nodes and tr.nodes["y_context"]["value"].shape == (4, 4, 1)


def test_decoder_scale_is_bounded_below():
    model = NeuralProcess(latent_dim=2, hidden=8, min_std=0.05)
    with torch.no_grad():
        model.decoder[-1].bias.fill_(-1e3)  # softplus -> 0
    p = model.decode(torch.zeros(2, 3, 1), torch.zeros(2, 1, 2))
    assert p.batch_shape == (2, 3) and p.event_shape == (1,)
    assert_close(p.base_dist.scale, torch.full((2, 3, 1), 0.05), atol=1e-6, what="decoder scale floor")


def test_padding_does_not_change_the_guide():
    """q(z | D) depends only on unmasked points: changing padded values changes nothing."""
    model = NeuralProcess(latent_dim=3, hidden=8)
    batch = _batch(T=3, nc=(1, 4))
    assert not bool(batch.context_mask.all()), "the test needs a ragged batch"
    y2 = torch.where(batch.context_mask[..., None], batch.context_y, torch.full_like(batch.context_y, 9.0))
    a = model.encode(batch.context_x, batch.context_y, batch.context_mask)
    b = model.encode(batch.context_x, y2, batch.context_mask)
    assert_close(a.base_dist.loc, b.base_dist.loc, atol=1e-6, what="guide mean under padding")


def test_guide_conditions_on_target_only_when_it_is_observed():
    model = NeuralProcess(latent_dim=3, hidden=8)
    batch = _batch(T=2)
    loc = {}
    for name, b in (("train", batch), ("infer", batch.without_target_y()), ("context", batch.context_only())):
        loc[name] = poutine.trace(model.guide).get_trace(b).nodes["z"]["fn"].base_dist.loc
    assert_close(loc["infer"], loc["context"], atol=1e-7, what="guide at inference vs context only")
    assert not torch.allclose(loc["train"], loc["context"]), "the training guide ignored the target set"


def test_elbo_loss_is_kl_to_standard_normal_plus_nll():
    """With one particle the default loss equals KL(q || N(0, I)) - E_q log p(y | z) estimated at the same z."""
    model = NeuralProcess(latent_dim=3, hidden=8)
    batch = _batch(T=3)
    pyro.set_rng_seed(1)
    loss = model.loss(batch)
    pyro.set_rng_seed(1)
    gtr = poutine.trace(model.guide).get_trace(batch)
    mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(batch)
    mtr.compute_log_prob()
    gtr.compute_log_prob()
    elbo = sum(s["log_prob"].sum() for s in mtr.nodes.values() if s["type"] == "sample") - gtr.nodes["z"]["log_prob"].sum()
    assert_close(loss, -elbo / 3, atol=1e-4, what="elbo loss")


def test_np_objective_uses_the_conditional_prior():
    """The "np" loss is KL(q(z|C,T) || q(z|C)) - E log p(y_{C+T} | z): zero KL when the target adds nothing."""
    torch.manual_seed(0)
    model = NeuralProcess(latent_dim=3, hidden=8, objective="np")
    batch = _batch(T=3)
    pyro.set_rng_seed(2)
    loss = model.loss(batch)
    x, y, m = batch.observed()
    q_all = model.encode(x, y, m)
    q_c = model.encode(batch.context_x, batch.context_y, batch.context_mask)
    pyro.set_rng_seed(2)
    z = q_all.rsample()[:, None]
    ll = (model.decode(x, z).log_prob(y) * m).sum(-1)
    expected = (torch.distributions.kl_divergence(q_all, q_c) - ll).mean()
    assert_close(loss, expected, atol=1e-5, what="np loss")
    # an elbo model gives a different number on the same batch (different KL term)
    elbo_model = NeuralProcess(latent_dim=3, hidden=8, objective="elbo")
    elbo_model.load_state_dict(model.state_dict())
    pyro.set_rng_seed(2)
    assert abs(float(elbo_model.loss(batch).detach()) - float(loss.detach())) > 1e-3
