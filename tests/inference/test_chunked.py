"""Chunked computations (memory budget): bounded allocations, and the results chunking may and may not change."""

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal
from torch.utils._python_dispatch import TorchDispatchMode

import pyro_meta
from pyro_meta.arviz import pointwise_log_likelihood
from pyro_meta.data import LinearTasks, Sinusoid
from pyro_meta.evaluation import _draw_scores
from pyro_meta.inference.chunked import can_split_tasks, draw_sites_chunked
from pyro_meta.model import SiteInfo
from pyro_meta.models import BayesianLinear, NeuralProcess

SMALL = 200_000  # bytes: forces many chunks on these problems


class _Largest(TorchDispatchMode):
    """The largest tensor any torch operation allocates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.fixture(scope="module")
def neural_process():
    torch.manual_seed(0)
    model = NeuralProcess(latent_dim=4, hidden=32, num_layers=2)
    batch = Sinusoid(noise_std=0.2).sample(40, (2, 6), (5, 9), generator=torch.Generator().manual_seed(0))
    post = pyro_meta.infer(model, batch, num_samples=60, seed=0)
    return model, batch, post


def test_predict_allocates_no_tensor_beyond_the_budget_or_its_result():
    """On main one [S, T, N, hidden] activation was allocated: 12.8 GB for the demo's model at 10,000 tasks."""
    torch.manual_seed(0)
    model = NeuralProcess(latent_dim=4, hidden=64, num_layers=2)
    batch = Sinusoid().sample(100, 5, 20, generator=torch.Generator().manual_seed(0))
    post = pyro_meta.infer(model, batch, num_samples=50, seed=0)
    result_bytes = 50 * 100 * 20 * 4
    activation = 50 * 100 * 20 * 64 * 4  # one hidden layer at the targets in an unchunked run: 26 MB
    with pyro_meta.memory_budget(10**6), _Largest() as watch:
        pred = post.predict()
    assert pred.samples.shape == (1, 50, 100, 20, 1)
    assert watch.largest <= max(10**6, result_bytes) < activation
    with pyro_meta.memory_budget(2**40), _Largest() as watch:  # one chunk: what main did
        post.predict()
    assert watch.largest >= activation


def test_chunked_predictive_keeps_its_deterministic_parts(neural_process):
    model, batch, post = neural_process
    pyro.set_rng_seed(1)
    whole = post.predict()
    f_whole, _ = post.function_draws()
    with pyro_meta.memory_budget(SMALL):
        pyro.set_rng_seed(1)
        parts = post.predict()
        f_parts, is_mean = post.function_draws()
        lp_parts = parts.log_prob(batch.target_y)
        pyro.set_rng_seed(1)
        again = post.predict()
    assert is_mean and torch.equal(f_parts, f_whole)  # E[y | x, z_s] of every draw: identical
    torch.testing.assert_close(lp_parts, whole.log_prob(batch.target_y), atol=1e-5, rtol=1e-6)  # logsumexp by chunks
    assert torch.equal(again.samples, parts.samples)  # same seed and budget: same draws
    assert not torch.equal(parts.samples, whole.samples)  # another chunking: another random stream


def test_chunked_predictive_draws_have_the_right_distribution():
    """BayesianLinear: y = f(x, w) + N(0, 0.3^2), so the residuals of the draws about E[y | w] are N(0, 0.09)."""
    model = BayesianLinear()
    batch = LinearTasks().sample(30, 5, 10, generator=torch.Generator().manual_seed(2))
    post = pyro_meta.infer(model, batch, num_samples=100, seed=0)
    with pyro_meta.memory_budget(50_000):
        pyro.set_rng_seed(3)
        y = post.predict().samples[0]
        f, _ = post.function_draws()
    r = (y - f).flatten()  # 30,000 residuals
    assert abs(float(r.mean())) < 4 * 0.3 / r.numel() ** 0.5
    assert abs(float(r.std()) - 0.3) < 0.01


def test_chunked_importance_matches_the_exact_posterior():
    model = BayesianLinear()  # untrained: its guide equals the exact posterior, a good proposal
    batch = LinearTasks().sample(12, (3, 6), 5, generator=torch.Generator().manual_seed(4))
    mean, cov = model.exact_posterior(batch)
    S = 400
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    for budget in (None, 300_000):
        with pyro_meta.memory_budget(budget or pyro_meta.get_memory_budget()):
            post = pyro_meta.infer(model, batch, method="importance", num_samples=S, num_proposals=1000, seed=0)
        chunks = post.diagnostics["task_chunks"]
        assert chunks == 1 if budget is None else chunks > 1
        assert post.samples["w"].shape == (1, S, 12, 4) and post.diagnostics["ess"].shape == (12,)
        err = (post.mean("w") - mean).abs() / sd
        # measured max over the 48 coordinates 0.11-0.15 posterior sds (seeds 0-2, both budgets): importance
        # ESS ~420, so a Monte Carlo sd of ~0.05 per coordinate; draws of the wrong tasks would be off by ~1 sd
        assert float(err.max()) < 0.3, err.max()


def test_chunked_log_likelihood_is_identical(neural_process):
    _, _, post = neural_process
    whole = pointwise_log_likelihood(post)
    with pyro_meta.memory_budget(SMALL):
        parts = pointwise_log_likelihood(post)
    assert whole.keys() == parts.keys() == {"y_context", "y_target"}
    for k in whole:
        torch.testing.assert_close(parts[k], whole[k], atol=1e-6, rtol=0)


def test_chunked_draw_scores_equal_the_whole_ones():
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(50, 20, 7, 2, generator=g)
    y = torch.randn(20, 7, 2, generator=g)
    m = torch.rand(20, 7, generator=g) > 0.3
    m[3] = False  # a task with no real point
    whole = _draw_scores(draws, y, m)
    with pyro_meta.memory_budget(50 * 7 * 2 * 48 * 3):  # 3 tasks per chunk
        parts = _draw_scores(draws, y, m)
    for k in whole:
        assert parts[k] == pytest.approx(whole[k], rel=1e-12), k


def test_tasks_are_split_only_when_that_is_exact():
    model = BayesianLinear()
    assert can_split_tasks(model)
    glob = SiteInfo("g", torch.Size([]), None, is_global=True)
    assert not can_split_tasks(model, {"g": glob})  # one draw shares its global value over the tasks

    class Packed(BayesianLinear):
        def __init__(self):
            super().__init__()
            self.auto = AutoMultivariateNormal(self.model)

    assert not can_split_tasks(Packed())  # an AutoContinuous packs every task's latents in one vector


def test_unsplittable_tasks_split_the_draws(neural_process):
    model, batch, post = neural_process
    sites = post.sites
    cond = batch.context_only()
    pyro.set_rng_seed(0)
    with pyro_meta.memory_budget(20_000):
        draws = draw_sites_chunked(model.guide, cond, 64, sites, model, kind="guide-test", split_tasks=False)
    assert draws["z"].shape == (64, 40, 1, 4)
    with torch.no_grad():
        q = model.encode(cond.context_x, cond.context_y, cond.context_mask)
    z = draws["z"][:, :, 0]
    se = q.base_dist.scale / 64**0.5
    assert float(((z.mean(0) - q.base_dist.loc).abs() / se).max()) < 5
