"""BayesianLastLayer: contracts (labels, binary labels, regression), the ELBO against Pyro, NUTS against the closed form."""

import math
import warnings

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pyro_meta
from pyro_meta.data import LineOrSine
from pyro_meta.models import BayesianLastLayer
from pyro_meta.models.bayesian_last_layer import _kl_mvn_diag
from pyro_meta.testing import MetaModelContract, assert_close, toy_episodes


class TestBayesianLastLayerContract(MetaModelContract):
    num_context = (1, 2)
    num_target = 2

    def make_model(self):
        return BayesianLastLayer(backbone="mlp", x_dim=4, hidden=(8,), feature_dim=3, guide_hidden=8)

    def make_tasks(self):
        return toy_episodes(way=3, dim=4)


class TestBayesianLastLayerBernoulliContract(TestBayesianLastLayerContract):
    check_unvectorized = True

    def make_model(self):
        return BayesianLastLayer(
            backbone="mlp", x_dim=4, hidden=(8,), feature_dim=3, guide_hidden=8, likelihood="bernoulli"
        )

    def make_tasks(self):
        return toy_episodes(way=2, dim=4)


class TestBayesianLastLayerRegressionContract(MetaModelContract):
    def make_model(self):
        return BayesianLastLayer(backbone="mlp", x_dim=1, hidden=(16,), feature_dim=4, likelihood="normal")

    def make_tasks(self):
        return LineOrSine(noise_std=0.2)


def test_loss_is_the_mean_field_elbo():
    """Class labels: ``loss`` equals ``TraceMeanField_ELBO / T`` of model and guide on the same draw (analytic KL)."""
    batch = toy_episodes(way=3, dim=4, shots=(1, 2), queries=(1, 3)).sample(
        3, generator=torch.Generator().manual_seed(0)
    )
    model = BayesianLastLayer(backbone="mlp", x_dim=4, hidden=(8,), feature_dim=3, guide_hidden=8)
    model.eval()  # an MLP extractor: the same features in both modes
    pyro.set_rng_seed(1)
    loss = model.loss(batch)
    pyro.set_rng_seed(1)
    expected = TraceMeanField_ELBO(max_plate_nesting=2).differentiable_loss(model.model, model.guide, batch) / 3
    assert_close(loss.detach(), expected.detach(), atol=1e-4, rtol=1e-5, what="categorical ELBO")


def test_regression_loss_is_an_unbiased_elbo_with_the_exact_kl():
    """Gaussian likelihood (full-covariance guide): the same mean as Pyro's Trace_ELBO, and the closed-form KL."""
    batch = LineOrSine(noise_std=0.2).sample(3, (2, 5), (3, 4), generator=torch.Generator().manual_seed(0))
    model = BayesianLastLayer(backbone="mlp", x_dim=1, hidden=(8,), feature_dim=3, likelihood="normal")
    model.eval()
    pyro.set_rng_seed(2)
    with torch.no_grad():
        ours = torch.stack([model.loss(batch) for _ in range(300)])
        pyro_loss = torch.tensor(
            [Trace_ELBO(max_plate_nesting=2).loss(model.model, model.guide, batch) / 3 for _ in range(300)],
            dtype=ours.dtype,
        )
    se = (ours.var() / 300 + pyro_loss.var() / 300).sqrt()
    assert abs(float(ours.mean() - pyro_loss.mean())) < 4 * float(se) + 1e-4, (ours.mean(), pyro_loss.mean(), se)
    loc, tril = model.posterior_params(batch)
    p_loc, p_scale = model.prior_params(1)
    expected = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(loc, scale_tril=tril),
        torch.distributions.MultivariateNormal(p_loc, scale_tril=torch.diag_embed(p_scale)),
    )
    assert_close(_kl_mvn_diag(loc, tril, p_loc, p_scale).detach(), expected.detach(), atol=1e-4, what="KL")


def test_nuts_and_the_guide_match_the_exact_regression_posterior():
    """Gaussian likelihood: the guide is the closed-form posterior, and NUTS samples it."""
    torch.manual_seed(0)
    model = BayesianLastLayer(
        backbone="mlp", x_dim=1, hidden=(16,), feature_dim=2, likelihood="normal", noise_std=0.3, learn_noise=False
    )
    tasks = LineOrSine(noise_std=0.3)
    pyro_meta.fit(model, tasks, num_steps=30, tasks_per_batch=8, lr=1e-2, progress=False)
    batch = tasks.sample(3, 4, 5, generator=torch.Generator().manual_seed(2))
    mean, cov = model.exact_posterior(batch)  # [T, 1, 3], [T, 1, 3, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        nuts = pyro_meta.infer(
            model, batch, method="nuts", num_samples=300, num_warmup=200, num_chains=2, seed=0, jit_compile=True
        )
    w = nuts.samples["w"].reshape(-1, 3, 1, 3)
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    # posterior means within 5 Monte Carlo standard errors (ESS >= 100), sds within 25%
    ess = nuts.diagnostics["ess_bulk"].min()
    assert ess > 100, ess
    err = (w.mean(0) - mean).abs() / (sd / ess.sqrt())
    assert bool((err < 5).all()), err
    assert_close(w.std(0), sd, rtol=0.25, what="posterior sd")
    amortized = pyro_meta.infer(model, batch, method="amortized", num_samples=4000, seed=0)
    wa = amortized.samples["w"].reshape(-1, 3, 1, 3)
    assert_close(wa.mean(0), mean, atol=4 * float(sd.max()) / 4000**0.5, what="guide mean")


def test_classification_methods_and_arviz_log_likelihood():
    """NUTS on the small head; the ArviZ log-likelihood of the labels is log softmax at each draw."""
    tasks = toy_episodes(way=3, dim=4, shots=2, queries=2)
    torch.manual_seed(0)
    model = BayesianLastLayer(backbone="mlp", x_dim=4, hidden=(8,), feature_dim=3, guide_hidden=8)
    pyro_meta.fit(model, tasks, num_steps=20, tasks_per_batch=8, lr=1e-2, progress=False)
    batch = tasks.sample(2, generator=torch.Generator().manual_seed(5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        post = pyro_meta.infer(
            model, batch, method="nuts", num_samples=20, num_warmup=20, num_chains=2, max_tree_depth=4, seed=0
        )
    assert post.samples["w"].shape == (2, 20, 2, 3, 4)
    assert post.diagnostics["r_hat"].shape == (2,)
    idata = post.to_arviz()
    lik = torch.as_tensor(idata.log_likelihood["y_context"].values)  # [C, S, M]
    with torch.no_grad():
        a = model.augmented(model.features(batch.context_x))  # [T, Nc, F+1]
        logits = torch.einsum("tnf,cstkf->cstnk", a, post.samples["w"])
        lp = torch.log_softmax(logits, -1).gather(-1, batch.context_y[None, None, ..., None].expand(2, 20, -1, -1, 1))[
            ..., 0
        ]
    assert_close(lik, lp.reshape(2, 20, -1), atol=1e-5, what="pointwise log-likelihood of the labels")
    probs = post.predict().class_probs
    assert probs.shape == (2, 6, 3)


def test_versa_loss_is_the_log_mean_predictive_per_target_point():
    """``objective="versa"``: ``-mean_n log (1/L) sum_l softmax(W_l a(x_n))[y_n]`` per task, by hand per task."""
    batch = toy_episodes(way=3, dim=4, shots=(1, 2), queries=(1, 3)).sample(
        3, generator=torch.Generator().manual_seed(0)
    )
    model = BayesianLastLayer(
        backbone="mlp", x_dim=4, hidden=(8,), feature_dim=3, guide_hidden=8, objective="versa", num_particles=4
    )
    pyro.set_rng_seed(3)
    loss = model.loss(batch)
    pyro.set_rng_seed(3)
    loc, scale = model.posterior_params(batch)  # [T, K, F+1]
    w = loc + scale * torch.randn((4,) + tuple(loc.shape))
    total = 0.0
    with torch.no_grad():
        a = model.augmented(model.features(batch.target_x))
        for t in range(3):
            m = batch.target_mask[t]
            lps = [
                torch.log_softmax(a[t][m] @ w[s, t].T, -1).gather(-1, batch.target_y[t][m][:, None])[:, 0]
                for s in range(4)
            ]
            total = total - (torch.logsumexp(torch.stack(lps), 0) - math.log(4)).mean()
    assert_close(loss.detach(), total / 3, atol=1e-5, what="VERSA objective")
    loss.backward()
    assert model.prior_log_scale.grad is None or not model.prior_log_scale.grad.any()  # the documented caveat
    assert model.prior_loc.grad.abs().sum() > 0  # mu is the guide's base location
    with pytest.raises(ValueError, match="target"):
        model.loss(batch.without_target_y())
    with pytest.raises(ValueError, match="objective"):
        BayesianLastLayer(objective="ml-pip")


def test_temper_likelihood_samples_the_cold_posterior_of_the_tempered_elbo():
    """``temper_likelihood``: the model's log likelihood times ``1 / kl_weight`` (prior unchanged), the loss and the
    pointwise ArviZ log-likelihood as without it; NUTS on it is sharper than on the model's own posterior."""
    tasks = toy_episodes(way=3, dim=4, shots=2, queries=2)
    batch = tasks.sample(2, generator=torch.Generator().manual_seed(5))
    options = dict(backbone="mlp", x_dim=4, hidden=(8,), feature_dim=3, guide_hidden=8, kl_weight=0.25)
    torch.manual_seed(0)
    base = BayesianLastLayer(**options)
    pyro_meta.fit(base, tasks, num_steps=20, tasks_per_batch=8, lr=1e-2, progress=False)
    cold = BayesianLastLayer(**options, temper_likelihood=True)
    cold.load_state_dict(base.state_dict())
    w = poutine.trace(base.model).get_trace(batch).nodes["w"]["value"]

    def parts(model):
        trace = poutine.trace(poutine.condition(model.model, {"w": w})).get_trace(batch)
        trace.compute_log_prob()
        sites = [n for n in trace.nodes.values() if n["type"] == "sample"]
        lik = sum(n["log_prob_sum"] for n in sites if n["is_observed"] and n["name"] != "w")
        return trace.nodes["w"]["log_prob_sum"], lik

    (prior_b, lik_b), (prior_c, lik_c) = parts(base), parts(cold)
    assert_close(prior_c, prior_b, what="prior unchanged")
    assert_close(lik_c, 4.0 * lik_b, rtol=1e-5, what="likelihood ^ (1 / kl_weight)")
    pyro.set_rng_seed(3)
    loss_b = base.loss(batch)
    pyro.set_rng_seed(3)
    assert_close(cold.loss(batch), loss_b, what="the meta-objective does not change")
    sharpness = []
    for model in (base, cold):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            post = pyro_meta.infer(
                model, batch, method="nuts", num_samples=40, num_warmup=40, num_chains=1, max_tree_depth=5, seed=0
            )
        sharpness.append(float(post.predict().class_probs.max(-1).values.mean()))
        lik = torch.as_tensor(post.to_arviz().log_likelihood["y_context"].values)  # [1, S, M], never scaled
        with torch.no_grad():
            a = model.augmented(model.features(batch.context_x))
            logits = torch.einsum("tnf,cstkf->cstnk", a, post.samples["w"])
            y = batch.context_y[None, None, ..., None].expand(1, 40, -1, -1, 1)
            lp = torch.log_softmax(logits, -1).gather(-1, y)[..., 0]
        assert_close(lik, lp.reshape(1, 40, -1), atol=1e-5, what="pointwise log-likelihood")
    assert sharpness[1] > sharpness[0] + 0.02, sharpness


def test_bad_inputs():
    model = BayesianLastLayer(backbone="mlp", x_dim=4, hidden=(8,), feature_dim=3)
    with pytest.raises(ValueError, match="long class labels"):
        model.loss(LineOrSine().sample(2, 3, 3))
    with pytest.raises(ValueError, match="only the Gaussian"):
        model.exact_posterior(toy_episodes(way=3, dim=4).sample(2))
    with pytest.raises(ValueError, match="likelihood"):
        BayesianLastLayer(likelihood="poisson")
    for bad in (dict(likelihood="normal"), dict(objective="versa"), dict(kl_weight=0.0)):
        with pytest.raises(ValueError, match="temper_likelihood=True needs"):
            BayesianLastLayer(temper_likelihood=True, **bad)
    with pytest.raises(TypeError, match="temper_likelihood must be a bool"):
        BayesianLastLayer(temper_likelihood=1)
    with pytest.raises(ValueError, match="image_shape"):
        BayesianLastLayer(image_shape=None)
