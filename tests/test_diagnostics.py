"""Simulation-based calibration: exact inference passes, an overconfident posterior fails."""

import matplotlib
import pytest
import torch

from pyro_meta import InferenceMethod, InferenceResult, Option
from pyro_meta.data import LinearTasks
from pyro_meta.diagnostics import sbc
from pyro_meta.models import BayesianLinear

matplotlib.use("Agg")


class ExactLinear(InferenceMethod):
    """Draws from ``BayesianLinear.exact_posterior`` (a user-defined method: the plug-in API at work).

    ``shrink`` scales the draws' spread around the posterior mean: 0.5 is a deliberately overconfident posterior.
    """

    name = "exact_linear"
    options = {"shrink": Option(1.0)}

    def run(self, problem, num_samples, shrink):
        mean, cov = problem.model.exact_posterior(problem.batch)  # [T, K], [T, K, K]
        eps = torch.randn(num_samples, *mean.shape)
        draws = mean + shrink * (torch.linalg.cholesky(cov) @ eps[..., None])[..., 0]
        return InferenceResult(samples={"w": draws[None]})


@pytest.fixture(scope="module")
def linear():
    model = BayesianLinear()
    with torch.no_grad():  # a prior a trained model would have, set by hand (training is not under test)
        model.mu.copy_(torch.tensor([0.5, -1.0, 0.3, 0.1]))
        model.log_s.copy_(torch.tensor([0.8, 0.5, 0.3, 0.2]).log())
    return model


def test_exact_posterior_passes_and_an_overconfident_one_fails(linear):
    exact = sbc(linear, LinearTasks(), method=ExactLinear(), num_replicates=400, num_context=3, seed=0)
    assert exact.passed(), exact.pvalues
    assert exact.ranks["w"].shape == (400, 4) and int(exact.ranks["w"].max()) <= 99
    over = sbc(
        linear,
        LinearTasks(),
        method=ExactLinear(),
        num_replicates=400,
        num_context=3,
        seed=0,
        method_options={"shrink": 0.5},
    )
    assert not over.passed() and over.min_pvalue < 1e-6
    from pyro_meta.plot import plot_sbc

    fig = plot_sbc(over)
    assert len(fig.axes) == 4


@pytest.mark.slow
def test_nuts_passes_sbc(linear):
    result = sbc(
        linear,
        LinearTasks(),
        method="nuts",
        num_replicates=100,
        num_context=3,
        seed=1,
        num_samples=200,
        method_options={"num_warmup": 150, "num_chains": 2},
    )
    assert result.passed(), result.pvalues


def test_sbc_arguments(linear):
    with pytest.raises(ValueError, match="num_bins"):
        sbc(linear, LinearTasks(), method=ExactLinear(), num_rank_draws=99, num_bins=7)
