"""NeuralProcessClassifier: the contract, its ELBO against Pyro, the VERSA objective by hand, any-way episodes."""

import math

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

import pyro_meta
from pyro_meta.models import NeuralProcessClassifier
from pyro_meta.testing import MetaModelContract, assert_close, toy_episodes


class TestNeuralProcessClassifierContract(MetaModelContract):
    num_context = (1, 2)
    num_target = 2

    def make_model(self):
        return NeuralProcessClassifier(
            backbone="mlp", x_dim=4, hidden=(8,), latent_dim=2, decoder_hidden=8, guide_hidden=8
        )

    def make_tasks(self):
        return toy_episodes(way=3, dim=4)


class TestNeuralProcessClassifierVersaContract(TestNeuralProcessClassifierContract):
    def make_model(self):
        return NeuralProcessClassifier(
            backbone="mlp", x_dim=4, hidden=(8,), latent_dim=2, decoder_hidden=8, guide_hidden=8, objective="versa"
        )


def _model(**kwargs):
    torch.manual_seed(0)
    model = NeuralProcessClassifier(
        backbone="mlp", x_dim=4, hidden=(8,), latent_dim=3, decoder_hidden=8, guide_hidden=8, **kwargs
    )
    model.eval()  # an MLP extractor: the same features in both modes
    return model


def _batch(seed=0):
    return toy_episodes(way=3, dim=4, shots=(1, 2), queries=(1, 3)).sample(
        3, generator=torch.Generator().manual_seed(seed)
    )


def test_elbo_loss_is_pyros_mean_field_elbo():
    model, batch = _model(), _batch()
    pyro.set_rng_seed(1)
    loss = model.loss(batch)
    pyro.set_rng_seed(1)
    expected = TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch) / 3
    assert_close(loss.detach(), expected.detach(), atol=1e-4, rtol=1e-5, what="NP classifier ELBO")


def test_versa_loss_is_the_log_mean_predictive_per_target_point():
    model, batch = _model(objective="versa", num_particles=4), _batch(1)
    pyro.set_rng_seed(3)
    loss = model.loss(batch)
    pyro.set_rng_seed(3)
    loc, scale = model.posterior_params(batch)
    z = loc + scale * torch.randn((4,) + tuple(loc.shape))
    total = 0.0
    with torch.no_grad():
        h = model.features(batch.target_x)
        hc = model.features(batch.context_x)
        for t in range(3):
            m = batch.target_mask[t]
            e = torch.stack([hc[t][batch.context_mask[t] & (batch.context_y[t] == k)].mean(0) for k in range(3)])
            lps = []
            for s in range(4):
                u = torch.cat([z[s, t], e, (e**2).sum(-1, keepdim=True)], -1)
                w = model.decoder(u) + model.decoder_skip(u)  # [K, F+1]
                logits = h[t][m] @ w[:, :-1].T + w[:, -1]
                lps.append(torch.log_softmax(logits, -1).gather(-1, batch.target_y[t][m][:, None])[:, 0])
            lp = torch.logsumexp(torch.stack(lps), 0) - math.log(4)
            total = total - lp.mean()
    assert_close(loss.detach(), total / 3, atol=1e-5, what="VERSA objective")


def test_one_model_serves_any_way_and_every_method():
    tasks = toy_episodes(way=3, num_classes=8, dim=4, shots=2, queries=2)
    model = NeuralProcessClassifier(
        backbone="mlp", x_dim=4, hidden=(8,), latent_dim=2, decoder_hidden=8, guide_hidden=8
    )
    pyro_meta.fit(model, tasks, num_steps=5, tasks_per_batch=4, lr=1e-2, progress=False)
    five = toy_episodes(way=5, num_classes=8, dim=4, shots=1, queries=2).sample(
        2, generator=torch.Generator().manual_seed(4)
    )
    for method, opts in (("amortized", {}), ("importance", {"num_proposals": 50}), ("svi", {"num_steps": 3})):
        post = pyro_meta.infer(model, five, method=method, num_samples=6, seed=0, **opts)
        assert post.samples["z"].shape == (1, 6, 2, 5, 2), method
        probs = post.predict().class_probs
        assert probs.shape == (2, 10, 5) and torch.allclose(probs.sum(-1), torch.ones(2, 10))
    with pytest.raises(ValueError, match="objective"):
        NeuralProcessClassifier(objective="np")
