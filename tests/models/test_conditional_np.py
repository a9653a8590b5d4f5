"""ConditionalNP: the contract (no task latent), its loss as the model's log density, padding, closed form."""

import pytest
import torch

import pyro_meta
from pyro_meta.data import Sinusoid
from pyro_meta.models import ConditionalNP
from pyro_meta.testing import MetaModelContract, assert_close

from .np_family_checks import (
    assert_broadcasts_over_draws,
    assert_loss_is_the_pyro_objective,
    assert_padding_and_order_change_nothing,
    ragged_batch,
)


class TestConditionalNPContract(MetaModelContract):
    has_task_latent = False

    def make_model(self):
        return ConditionalNP(hidden=8)


def test_loss_padding_and_draws():
    model = ConditionalNP(hidden=(8, 6))
    batch = ragged_batch()
    assert_loss_is_the_pyro_objective(model, batch)
    assert_padding_and_order_change_nothing(model, batch)
    assert_broadcasts_over_draws(model, batch)


def test_prediction_is_the_mean_embedding_closed_form():
    """``h = [x, rho(mean_n e([x_n, y_n]))]``: computed by hand from the modules on one task."""
    model = ConditionalNP(hidden=8)
    batch = ragged_batch(T=1, nc=4, nt=3)
    enc = model.encoder
    r = enc.rho(enc.point_mlp(torch.cat([batch.context_x[0], batch.context_y[0]], -1)).mean(0))
    h = model.features(model.encode_context(batch), batch.target_x)
    assert_close(h[0], torch.cat([batch.target_x[0], r.expand(3, -1)], -1), atol=1e-6, what="CNP features")
    p = model.decode(h)
    loc, raw = model.decoder(h).chunk(2, -1)
    assert_close(p.base_dist.loc, loc, atol=0.0, what="mean")
    assert_close(p.base_dist.scale, 0.01 + 0.99 * torch.nn.functional.softplus(raw), atol=1e-7, what="scale")


def test_validation():
    with pytest.raises(ValueError, match="hidden"):
        ConditionalNP(hidden=0)
    with pytest.raises(ValueError, match="min_std"):
        ConditionalNP(min_std=0.0)
    with pytest.raises(ValueError, match="activation"):
        ConditionalNP(activation="sigmoid")
    with pytest.raises(ValueError, match=r"ConditionalNP\(x_dim=2"):
        ConditionalNP(x_dim=2).loss(ragged_batch())
    with pytest.raises(TypeError, match="TaskBatch"):
        ConditionalNP().model({"x": 1})
    with pytest.raises(ValueError, match="targets"):
        ConditionalNP().loss(ragged_batch().context_only())


def test_training_improves_the_predictive():
    """200 steps on noisy sinusoids lower the evaluated NLL by a clear margin (scored as a no-latent model)."""
    model, tasks = ConditionalNP(hidden=32), Sinusoid(noise_std=0.1)
    kw = dict(methods=["amortized"], num_tasks=20, num_context=[5], seed=0, num_samples=20)
    before = pyro_meta.evaluate({"cnp": model}, tasks, **kw).rows[0]["nll"]
    pyro_meta.fit(model, tasks, num_steps=200, tasks_per_batch=16, lr=3e-3, progress=False)
    after = pyro_meta.evaluate({"cnp": model}, tasks, **kw).rows[0]["nll"]
    assert after < before - 0.5, (before, after)
