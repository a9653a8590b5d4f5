"""Every path on every available device and in float32/float64: fit, each infer method, predict, metrics, evaluate, ArviZ.

CUDA cases are skipped with a reason on a machine without CUDA (``benchmarks/gpu_check.py`` runs this file on a
GPU). A tensor created without the input's device fails there; without its dtype it fails here in float64.
Each result is checked against something independent: BayesianLinear's closed-form posterior and predictive,
brute-force metric formulas in float64 on the CPU, and the same call on the CPU.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_meta
from pyro_meta import metrics
from pyro_meta.data import LinearTasks, Sinusoid, TaskBatch
from pyro_meta.model import observe, task_plate
from pyro_meta.models import MAML, BayesianLinear, NeuralProcess
from pyro_meta.testing import assert_close

CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device on this machine (benchmarks/gpu_check.py runs these tests on a GPU)",
)
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
DTYPES = [torch.float32, torch.float64]
OPTIONS = {
    "amortized": {},
    "prior": {},
    "svi": dict(num_steps=60),
    "importance": dict(num_proposals=1000),
    "nuts": dict(num_warmup=50, num_chains=1, full_mass=True),
    "hmc": dict(num_warmup=50, num_chains=1),
}
#: MCMC runs here are short (50 + 100 iterations, ~2900 gradients: ~10 s each on an idle core, a minute on a busy one)
METHODS = [pytest.param(m, marks=pytest.mark.slow) if m in ("nuts", "hmc") else m for m in OPTIONS]


class _Cast:
    """A task distribution whose batches are cast to ``dtype`` (the data sources draw float32)."""

    def __init__(self, tasks, dtype):
        self.tasks, self.dtype = tasks, dtype

    def sample(self, num_tasks, num_context, num_target, generator=None):
        return self.tasks.sample(num_tasks, num_context, num_target, generator=generator).to(self.dtype)


def _linear(device, dtype):
    """An untrained BayesianLinear on ``device`` (its guide is then exact) and a CPU batch in ``dtype``."""
    model = BayesianLinear().to(device=device, dtype=dtype)
    batch = LinearTasks().sample(4, 6, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    return model, batch


def _on(t: torch.Tensor, device: str, dtype: torch.dtype) -> bool:
    return t.device.type == device and t.dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_moves_the_model_and_equals_the_cpu_run(device, dtype):
    """MAML's meta-loss has no Monte Carlo draw, so training on any device follows the CPU run."""
    tasks = _Cast(Sinusoid(noise_std=0.1), dtype)
    runs = []
    for where in (device, None):
        torch.manual_seed(0)
        model = MAML(hidden=(16, 16)).to(dtype)
        res = pyro_meta.fit(
            model,
            tasks,
            num_steps=15,
            tasks_per_batch=4,
            num_context=5,
            num_target=5,
            lr=1e-2,
            seed=0,
            progress=False,
            device=where,
        )
        runs.append((model, res))
    (model, res), (ref, ref_res) = runs
    assert all(_on(p, device, dtype) for p in model.parameters())
    got = torch.cat([p.detach().cpu().reshape(-1) for p in model.parameters()])
    want = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    assert_close(
        got,
        want,
        rtol=1e-4 if device == "cuda" else 0.0,
        atol=1e-6 if device == "cuda" else 0.0,
        what=f"parameters after fit on {device}",
    )
    assert_close(
        torch.tensor(res.losses), torch.tensor(ref_res.losses), rtol=1e-4 if device == "cuda" else 0.0, what="losses"
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_infers_on_the_device(device, dtype, method):
    model, batch = _linear(device, dtype)
    mcmc = method in ("nuts", "hmc")
    post = pyro_meta.infer(
        model, batch, method=method, num_samples=100 if mcmc else 200, seed=0, device=device, **OPTIONS[method]
    )
    assert _on(post.samples["w"], device, dtype) and post.batch.device.type == device
    if method == "prior":
        mean, sd = model.mu.detach().expand(4, -1), model.s.detach().expand(4, -1)
    else:
        mean, cov = model.exact_posterior(post.batch)
        sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    error = float(((post.mean("w") - mean).abs() / sd).mean())
    # 200 independent draws: Monte Carlo error ~0.07 sd (measured 0.03-0.12); 100 correlated MCMC draws: measured
    # 0.07-0.34. The prior mean, a wrong posterior, is several posterior sds away.
    bound = 0.5 if mcmc else 0.25
    assert error < bound, f"{method} on {device}/{dtype}: posterior mean off by {error:.3f} sd"
    for name in post.per_task:
        assert post.diagnostics[name].shape == (4,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_interval_and_log_prob_on_the_device(device, dtype):
    model, batch = _linear(device, dtype)
    post = pyro_meta.infer(model, batch, method="amortized", num_samples=2000, seed=0, device=device)
    pred = post.predict()
    lo, hi = pred.interval(0.9)
    lp = pred.log_prob()
    for t in (pred.samples, pred.mean, lo, hi, lp):
        assert _on(t, device, dtype)
    mean, sd = model.exact_predictive(post.batch)
    assert_close(pred.mean, mean, atol=float(0.1 * sd.max()), what="predictive mean")
    exact = dist.Normal(mean, sd).log_prob(post.batch.target_y)[..., 0]
    assert float((lp - exact).abs().mean()) < 0.02
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.95, dtype=dtype)).item()
    assert_close(hi, mean + z * sd, atol=float(0.15 * sd.max()), what="upper 90% bound")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_metrics_on_the_device_equal_float64_reference_formulas(device, dtype):
    g = torch.Generator().manual_seed(0)
    S, T, N = 50, 3, 7
    samples, y = torch.randn(S, T, N, 1, generator=g), torch.randn(T, N, 1, generator=g)
    mask = torch.rand(T, N, generator=g) > 0.2
    x, yy, m = samples.to(device, dtype), y.to(device, dtype), mask.to(device)
    tol = dict(rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6 if dtype == torch.float32 else 1e-12)
    # CRPS: E|X - y| - 0.5 E|X - X'| over all S^2 pairs, brute force
    s64, y64 = samples.double(), y.double()
    crps_ref = ((s64 - y64).abs().mean(0) - 0.5 * (s64[:, None] - s64[None]).abs().mean((0, 1)))[mask].mean()
    assert_close(torch.tensor(metrics.crps(x, yy, m), dtype=torch.float64), crps_ref, **tol, what="crps")
    lo, hi = torch.quantile(s64, torch.tensor([0.05, 0.95], dtype=torch.float64), dim=0)
    cover_ref = ((y64 >= lo) & (y64 <= hi))[mask].double().mean()
    assert metrics.coverage(x, yy, m, 0.9) == pytest.approx(float(cover_ref))
    pit = metrics.pit(x, yy, m)
    assert pit.device.type == device
    assert_close(pit.cpu(), (s64 < y64).double().mean(0)[mask].reshape(-1), **tol, what="pit")
    edges, freq = metrics.pit_histogram(pit, bins=5)
    assert edges.device.type == device and freq.device.type == device and float(freq.sum()) == pytest.approx(1.0)
    # classification: class probabilities [T, N, C]
    probs = torch.softmax(torch.randn(T, N, 4, generator=g), -1)
    labels = torch.randint(0, 4, (T, N), generator=g)
    p, lab = probs.to(device, dtype), labels.to(device)
    acc_ref = (probs.argmax(-1) == labels)[mask].double().mean()
    assert metrics.accuracy(p, lab, m) == pytest.approx(float(acc_ref))
    brier_ref = (probs.double() - nn.functional.one_hot(labels, 4).double()).pow(2).sum(-1)[mask].mean()
    assert metrics.brier_score(p, lab, m) == pytest.approx(float(brier_ref), rel=1e-5)
    ece, bins = metrics.expected_calibration_error(p, lab, m, bins=4)
    assert bins.edges.device.type == device and 0.0 <= ece <= 1.0
    assert ece == pytest.approx(metrics.expected_calibration_error(probs.double(), labels, mask, bins=4)[0], abs=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_evaluate_on_the_device_scores_like_the_cpu_run(device, dtype):
    """A NeuralProcess against the sinusoid oracle (scored on the CPU batch), on the device and on the CPU."""
    tasks = _Cast(Sinusoid(noise_std=0.2), dtype)
    oracle = pyro_meta.SinusoidOracle(Sinusoid(noise_std=0.2))
    tables = []
    for where in (device, None):
        torch.manual_seed(0)
        model = NeuralProcess(latent_dim=2, hidden=16).to(dtype)
        if where is not None:
            model.to(where)
        tables.append(
            pyro_meta.evaluate(
                model,
                tasks,
                methods=["amortized", "importance"],
                num_tasks=4,
                num_context=3,
                num_target=10,
                num_samples=200,
                oracle=oracle,
                seed=0,
                method_options={"importance": {"num_proposals": 400}},
                device=where,
            )
        )
    got, ref = tables
    for a, b in zip(got.rows, ref.rows):
        for key in ("nll", "mse", "crps", "coverage_90", "nll_gap"):
            if key not in b:
                continue
            if device == "cpu":  # the same draws
                assert a[key] == pytest.approx(b[key], rel=1e-6 if dtype == torch.float32 else 1e-12), (key, a, b)
            else:  # other random streams: Monte Carlo agreement
                assert a[key] == pytest.approx(b[key], rel=0.1, abs=0.05), (key, a, b)


class _Classifier(pyro_meta.MetaModel):
    """``b_t ~ N(0, I_3)``; ``y ~ Categorical(b_t + x w)``; a fixed Gaussian guide."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 0.0, -1.0]))

    def model(self, batch):
        with task_plate(batch):
            b = pyro.sample("b", dist.Normal(batch.context_x.new_zeros(3), 1.0).to_event(1))
            observe(batch, lambda x: dist.Categorical(logits=b + x * self.w))

    def guide(self, batch):
        with task_plate(batch):
            pyro.sample("b", dist.Normal(batch.context_x.new_zeros(batch.num_tasks, 1, 3), 0.7).to_event(1))


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_classification_on_the_device(device):
    g = torch.Generator().manual_seed(0)
    x = 4 * torch.rand(6, 12, 1, generator=g) - 2
    y = torch.randint(0, 3, (6, 12), generator=g)
    tasks = TaskBatch(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:])
    rows = [
        pyro_meta.evaluate(
            _Classifier().to(where or "cpu"), tasks, num_context=4, num_samples=100, seed=0, device=where
        ).rows[0]
        for where in (device, None)
    ]
    for key in ("nll", "accuracy", "brier", "ece"):
        assert rows[0][key] == pytest.approx(rows[1][key], rel=1e-5 if device == "cpu" else 0.1), key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_arviz_export_of_a_device_posterior(device, dtype):
    model, batch = _linear(device, dtype)
    post = pyro_meta.infer(model, batch, method="amortized", num_samples=50, seed=0, device=device)
    idata = post.to_arviz()
    assert_close(torch.as_tensor(idata.posterior["w"].values), post.samples["w"].cpu(), what="exported draws")
    assert idata.log_likelihood["y_context"].shape == (1, 50, int(batch.context_mask.sum()))
    assert idata.posterior_predictive["y_target"].shape == (1, 50, 4, 8, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_taskbatch_from_tasks_and_to_keep_masks_and_labels(device):
    batch = TaskBatch.from_tasks(
        [([0.0, 1.0], [2, 0]), ([1.0], [1])], target=[([2.0], [1]), ([3.0, 4.0], [0, 2])], device=device
    )
    for t in (batch.context_x, batch.context_y, batch.target_mask):
        assert t.device.type == device
    assert batch.context_y.dtype == torch.long and batch.context_mask.dtype == torch.bool
    assert batch.context_mask.tolist() == [[True, True], [True, False]]
    back = batch.to("cpu").to(device, torch.float64)
    assert back.context_x.dtype == torch.float64 and back.context_y.dtype == torch.long
    assert back.target_mask.device.type == device


def test_infer_and_evaluate_refuse_a_model_elsewhere():
    """``device=`` moves the batch, never the model: a model on another device is named before any work."""
    model, batch = _linear("cpu", torch.float32)
    with pytest.raises(TypeError, match=r"model.to\('meta'\)"):
        pyro_meta.infer(model, batch, device="meta")
    with pytest.raises(TypeError, match=r"evaluate\(device='meta'\)"):
        pyro_meta.evaluate(model, LinearTasks(), num_tasks=2, device="meta")
    with pytest.raises(ValueError, match="device must be"):
        pyro_meta.infer(model, batch, device="no-such-device")
