"""``method="batched_hmc"``: options, result keys (as ``nuts``), ArviZ export, agreement with NUTS, multimodality.

Exactness against the conjugate closed form is in ``test_exactness.py`` (the same bounds as NUTS).
"""

import re
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_meta
from pyro_meta.arviz import rhat_ess
from pyro_meta.data import LinearTasks, LineOrSine, Sinusoid
from pyro_meta.models import BayesianLinear, NeuralProcess


@pytest.fixture(scope="module")
def linear():
    model = BayesianLinear()
    pyro_meta.fit(model, LinearTasks(), num_steps=300, tasks_per_batch=32, lr=0.05, progress=False, seed=0)
    batch = LinearTasks().sample(5, (3, 6), 5, generator=torch.Generator().manual_seed(9))
    return model, batch


def test_bad_options_are_refused(linear):
    model, batch = linear
    with pytest.raises(ValueError, match="globals='sample'.*'batched_hmc'"):
        pyro_meta.infer(model, batch, method="batched_hmc", globals="sample")
    with pytest.raises(ValueError, match="num_chains >= 2"):
        pyro_meta.infer(model, batch, method="batched_hmc", trajectory="chees", num_chains=1)
    with pytest.raises(ValueError, match="num_samples must be >= 4"):
        pyro_meta.infer(model, batch, method="batched_hmc", num_samples=3)
    with pytest.raises(ValueError, match="trajectory"):
        pyro_meta.infer(model, batch, method="batched_hmc", trajectory="nuts")
    with pytest.raises(ValueError, match="init"):
        pyro_meta.infer(model, batch, method="batched_hmc", init="median")
    with pytest.raises(TypeError, match="compile"):
        pyro_meta.infer(model, batch, method="batched_hmc", compile="yes")
    # and nuts' jit_compile takes False, True or "inductor" only
    for bad in ("max-autotune", 1):
        with pytest.raises(ValueError, match="jit_compile must be one of"):
            pyro_meta.infer(model, batch, method="nuts", jit_compile=bad)


def test_result_has_the_keys_of_nuts_and_exports_to_arviz(linear):
    model, batch = linear
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # short chains
        post = pyro_meta.infer(model, batch, method="batched_hmc", num_samples=20, num_warmup=30, num_chains=3, seed=0)
        nuts = pyro_meta.infer(model, batch, method="nuts", num_samples=20, num_warmup=10, num_chains=2, seed=0)
    assert post.samples["w"].shape == (3, 20, 5, 4)
    assert set(nuts.per_task) <= set(post.per_task) and "task_divergences" in post.per_task
    assert set(nuts.summary) == set(post.summary)
    assert set(nuts.sample_stats) == set(post.sample_stats)
    for k, v in post.sample_stats.items():
        assert v.shape == (3, 20), k
    d = post.diagnostics
    assert d["divergences"].shape == (3,) and d["step_size"].shape == (3, 5) and d["inverse_mass"].shape == (3, 5, 4)
    assert d["r_hat"].shape == (5,) and d["num_grad_evals"] > 50
    # ArviZ's own R-hat and ESS of the exported draws are the per-task numbers
    idata = post.to_arviz()
    assert set(idata.sample_stats.data_vars) >= {"diverging", "acceptance_rate", "step_size", "lp"}
    assert idata.posterior["w"].dims == ("chain", "draw", "task", "w_dim_0")
    import arviz as az

    rhat = az.rhat(idata, var_names=["w"])["w"].max("w_dim_0").values
    assert torch.allclose(d["r_hat"], torch.as_tensor(rhat, dtype=d["r_hat"].dtype), rtol=1e-6)
    sub = post.select([1, 3])
    assert sub.samples["w"].shape == (3, 20, 2, 4) and torch.equal(sub.diagnostics["r_hat"], d["r_hat"][[1, 3]])
    # evaluate reports the MCMC columns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = pyro_meta.evaluate(
            model,
            LinearTasks(),
            methods=["batched_hmc"],
            num_tasks=3,
            num_context=4,
            num_target=5,
            num_samples=20,
            method_options={"batched_hmc": {"num_warmup": 20, "num_chains": 2}},
        )
    (row,) = table.rows
    assert {"divergences", "min_ess", "min_ess_tail", "max_r_hat"} <= set(row)


def test_same_seed_same_draws_and_progress_bar(linear, capsys):
    model, batch = linear
    runs = []
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            runs.append(
                pyro_meta.infer(
                    model,
                    batch,
                    method="batched_hmc",
                    num_samples=10,
                    num_warmup=10,
                    num_chains=2,
                    seed=3,
                    progress=True,
                )
            )
    assert torch.equal(runs[0].samples["w"], runs[1].samples["w"])
    assert "batched HMC" in capsys.readouterr().err


def test_divergences_are_counted_per_task():
    """A per-task step size forced far too large: every chain-task diverges, and the counts say so."""
    model = BayesianLinear()
    batch = LinearTasks().sample(3, 5, 5, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        post = pyro_meta.infer(
            model,
            batch,
            method="batched_hmc",
            num_samples=10,
            num_warmup=0,
            num_chains=2,
            step_size=50.0,
            adapt_mass_matrix=False,
            seed=0,
        )
    assert int(post.diagnostics["task_divergences"].min()) > 0
    assert post.summary["divergences"] == int(post.diagnostics["task_divergences"].sum())
    assert bool(post.sample_stats["diverging"].any())


@pytest.mark.slow
def test_matches_nuts_on_a_trained_neural_process():
    """The predictive mean function ``E[f(x, z) | context]`` of ``batched_hmc`` and NUTS agree within Monte Carlo error.

    Bound per target point: 4 standard errors of the difference, each ``sd(f) / sqrt(ESS(f))`` with
    ArviZ's bulk ESS of ``f`` at that point. The prior's predictive (a different distribution) must fail it.
    """
    tasks = Sinusoid(noise_std=0.2)
    torch.manual_seed(0)
    model = NeuralProcess(latent_dim=4, hidden=32, num_layers=2)
    pyro_meta.fit(
        model,
        tasks,
        num_steps=400,
        tasks_per_batch=16,
        num_context=(2, 8),
        num_target=10,
        lr=5e-3,
        progress=False,
        seed=0,
    )
    batch = tasks.sample(4, 4, 15, generator=torch.Generator().manual_seed(2))
    runs = {
        "batched_hmc": pyro_meta.infer(
            model, batch, method="batched_hmc", num_samples=200, num_warmup=150, num_chains=4, seed=0
        ),
        "nuts": pyro_meta.infer(
            model, batch, method="nuts", num_samples=200, num_warmup=150, num_chains=2, seed=0, jit_compile=True
        ),
        "prior": pyro_meta.infer(model, batch, method="prior", num_samples=400, seed=0),
    }
    assert int(runs["batched_hmc"].diagnostics["divergences"].sum()) == 0
    assert float(runs["batched_hmc"].diagnostics["r_hat"].max()) < 1.05
    moments = {}
    for name, post in runs.items():
        f, _ = post.function_draws()  # [C*S, T, Nt, 1]
        f = f[..., 0].reshape(post.num_chains, post.num_samples, *f.shape[1:3])
        ess = rhat_ess(f)["ess_bulk"].clamp_min(1.0)
        moments[name] = (f.mean((0, 1)), f.std((0, 1)) / ess.sqrt().to(f.dtype))

    def excess(a, b):
        (ma, sa), (mb, sb) = moments[a], moments[b]
        return float(((ma - mb).abs() / (4 * (sa**2 + sb**2).sqrt())).max())

    assert excess("batched_hmc", "nuts") < 1.0
    assert excess("prior", "nuts") > 1.0  # the check can fail


class GatedLineOrSine(pyro_meta.MetaModel):
    """A line or a sine per task: ``gate ~ N(-2, .4^2)/2 + N(2, .4^2)/2``, ``g = sigmoid(3 gate)``,
    ``theta = (slope, amplitude) ~ N(0, 2^2 I)``, ``y ~ N(g slope x + (1 - g) amplitude sin x, 0.1^2)``.

    With one context point both a line and a sine fit it, so each task's posterior has a line mode and
    a sine mode, separated by the gate prior's trough (density e^-12 of the peaks): no HMC crosses it.
    """

    def model(self, batch):
        x0 = batch.context_x
        with pyro_meta.task_plate(batch):
            mix = dist.MixtureSameFamily(
                dist.Categorical(x0.new_tensor([0.5, 0.5])), dist.Normal(x0.new_tensor([-2.0, 2.0]), 0.4)
            )
            gate = pyro.sample("gate", mix.expand(mix.batch_shape))
            theta = pyro.sample("theta", dist.Normal(x0.new_zeros(2), 2.0).to_event(1))

            def likelihood(x):
                g = torch.sigmoid(3 * gate)[..., None]
                return dist.Normal(g * theta[..., :1] * x + (1 - g) * theta[..., 1:] * torch.sin(x), 0.1).to_event(1)

            pyro_meta.observe(batch, likelihood)

    def guide(self, batch):
        pass


@pytest.mark.slow
def test_multimodal_line_or_sine_posterior_is_reported():
    """Chains started at prior draws land in different modes and stay: R-hat says so and the warning names the tasks."""
    batch = LineOrSine(noise_std=0.1).sample(4, 1, 0, generator=torch.Generator().manual_seed(0)).context_only()
    with pytest.warns(UserWarning, match=r"BATCHED_HMC: tasks \[.*\] mixed badly") as record:
        post = pyro_meta.infer(
            GatedLineOrSine(),
            batch,
            method="batched_hmc",
            init="prior",
            num_chains=4,
            num_samples=60,
            num_warmup=60,
            max_leapfrog=32,
            seed=0,
        )
    flagged = [int(t) for t in re.search(r"tasks \[([0-9, ]*)\]", str(record[-1].message)).group(1).split(",")]
    line_share = (torch.sigmoid(3 * post.samples["gate"]) > 0.5).double().mean(1)  # [C, T]: draws in the line mode
    split = ((line_share.amax(0) > 0.9) & (line_share.amin(0) < 0.1)).nonzero().flatten().tolist()
    assert split, "no task had chains in both modes (seed chosen so that some do)"
    assert set(split) <= set(flagged)
    assert bool((post.diagnostics["r_hat"][split] > 1.2).all())
