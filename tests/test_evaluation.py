"""``pyro_meta.evaluate``: reproducibility, every column against an independent computation, the oracle check."""

import csv
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_meta
from pyro_meta import metrics
from pyro_meta.data import LinearTasks, Sinusoid, TaskBatch
from pyro_meta.evaluation import EvaluationTable, evaluate
from pyro_meta.model import MetaModel, observe, task_plate
from pyro_meta.models import BayesianLinear, NeuralProcess
from pyro_meta.oracles import SinusoidOracle
from pyro_meta.testing import assert_close

FAST = {
    "svi": {"num_steps": 20},
    "importance": {"num_proposals": 300},
    "nuts": {"num_warmup": 20, "num_chains": 1, "jit_compile": True, "max_tree_depth": 4},
}


class ExactLinearOracle:
    """The closed-form predictive of a BayesianLinear whose prior is the LinearTasks truth: Bayes-optimal."""

    def __init__(self, model):
        self.model = model

    def predict(self, batch):
        mean, sd = self.model.exact_predictive(batch)
        return mean, sd**2

    def log_prob(self, batch):
        mean, sd = self.model.exact_predictive(batch)
        return dist.Normal(mean, sd).log_prob(batch.target_y)[..., 0].masked_fill(~batch.target_mask, 0.0)

    def sample(self, batch, num_samples, generator=None):
        mean, sd = self.model.exact_predictive(batch)
        return mean + sd * torch.randn((num_samples,) + tuple(mean.shape), generator=generator)


@pytest.fixture(scope="module")
def linear():
    """BayesianLinear with its prior set to the generating values: exact inference is the oracle."""
    tasks = LinearTasks()
    model = BayesianLinear()
    with torch.no_grad():
        model.mu.copy_(tasks.weight_mean)
        model.log_s.copy_(tasks.weight_scale.log())
        model.q_mu.copy_(tasks.weight_mean)
        model.q_log_s.copy_(tasks.weight_scale.log())
    return tasks, model


def _strip(table):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in table.rows]


def test_same_model_and_seed_give_identical_numbers(linear):
    tasks, model = linear
    kw = dict(
        methods=["amortized", "svi", "importance", "nuts"],
        num_tasks=5,
        num_context=[2, 4],
        num_target=8,
        num_samples=40,
        method_options=FAST,
        oracle=ExactLinearOracle(model),
        seed=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short chains warn about their ESS
        a, b = evaluate(model, tasks, **kw), evaluate(model, tasks, **kw)
        c = evaluate(model, tasks, **{**kw, "seed": 4, "methods": ["amortized"]})
    assert len(a) == 2 * 5 and [r["method"] for r in a.rows[:5]] == ["oracle", "amortized", "svi", "importance", "nuts"]
    assert _strip(a) == _strip(b)
    assert all(math.isfinite(v) for r in a.rows for k, v in r.items() if isinstance(v, float))
    # another seed draws other tasks: the check above can fail
    assert a.select(method="amortized", num_context=2).rows[0]["nll"] != c.select(num_context=2).rows[0]["nll"]


def test_columns_match_an_independent_computation(linear):
    """Oracle row vs closed-form Gaussian scores; a model row vs infer + metrics by hand."""
    tasks, model = linear
    T, Nc, Nt, S, seed = 8, 3, 20, 1000, 7
    table = evaluate(
        model,
        tasks,
        methods=["amortized", "importance"],
        num_tasks=T,
        num_context=Nc,
        num_target=Nt,
        num_samples=S,
        oracle=ExactLinearOracle(model),
        seed=seed,
        method_options={"importance": {"num_proposals": 500}},
    )
    batch = tasks.sample(T, Nc, Nt, generator=torch.Generator().manual_seed(seed))
    mean, sd = model.exact_predictive(batch)
    y = batch.target_y
    lp = dist.Normal(mean.double(), sd.double()).log_prob(y.double())[..., 0]  # [T, Nt]
    per_task = -lp.mean(-1)
    o = table.select(method="oracle").rows[0]
    assert o["model"] == "ExactLinearOracle" and o["num_context"] == Nc and o["num_tasks"] == T
    assert_close(torch.tensor(o["nll"]), -lp.mean(), atol=1e-6, what="oracle nll")
    assert_close(torch.tensor(o["nll_se"]), per_task.std() / math.sqrt(T), atol=1e-6, what="oracle nll_se")
    sq = ((mean - y) ** 2).double()[..., 0]
    assert_close(torch.tensor(o["mse"]), sq.mean(), atol=1e-6, what="oracle mse")
    assert_close(torch.tensor(o["mse_se"]), sq.mean(-1).std() / math.sqrt(T), atol=1e-6, what="oracle mse_se")
    # closed-form Gaussian CRPS and interval coverage (the row uses S oracle draws: Monte Carlo error)
    z = ((y - mean) / sd).double()
    normal = torch.distributions.Normal(0.0, 1.0)
    crps = (sd.double() * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))).mean()
    assert_close(torch.tensor(o["crps"]), crps, rtol=0.02, what="oracle crps vs closed form")
    for level in (0.5, 0.9):
        exact = (z.abs() <= normal.icdf(torch.tensor(0.5 + level / 2))).double().mean()
        assert_close(torch.tensor(o[f"coverage_{int(level * 100)}"]), exact, atol=0.04, what=f"coverage {level}")

    # a model row is infer -> predict -> metrics, by hand, with the same seed
    post = pyro_meta.infer(model, batch, method="amortized", num_samples=S, seed=seed)
    pred = post.predict()
    lp_a = pred.log_prob(y).double()
    row = table.select(method="amortized").rows[0]
    assert_close(
        torch.tensor(row["nll"]),
        torch.tensor(-metrics.log_likelihood(lp_a, batch.target_mask)),
        atol=1e-9,
        what="amortized nll",
    )
    assert_close(torch.tensor(row["nll_gap"]), torch.tensor(row["nll"] - o["nll"]), atol=1e-9, what="nll_gap")
    gap_se = (-lp_a.mean(-1) - per_task).std() / math.sqrt(T)
    assert_close(torch.tensor(row["nll_gap_se"]), gap_se, atol=1e-6, what="paired nll_gap_se")
    assert_close(
        torch.tensor(row["mse"]),
        torch.tensor(metrics.mse(pred.mean, y, batch.target_mask)),
        atol=1e-6,
        what="amortized mse",
    )
    assert row["crps"] == metrics.crps(pred.samples, y, batch.target_mask)
    assert row["coverage_90"] == metrics.coverage(pred.samples, y, batch.target_mask, 0.9)
    assert row["seconds"] > 0 and "divergences" not in row
    imp = table.select(method="importance").rows[0]
    assert imp["min_ess"] > 1 and "max_r_hat" not in imp
    # the guide's prior equals the model's here, so the amortized guide is exact up to its encoder noise
    assert abs(row["nll_gap"]) < 3 * row["nll_gap_se"] + 0.02, row


@pytest.mark.slow
def test_nuts_row_matches_the_exact_predictive(linear):
    """NUTS samples the exact posterior: its predictive NLL and MSE are the closed form's up to Monte Carlo error."""
    tasks, model = linear
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = evaluate(
            model,
            tasks,
            methods=["nuts"],
            num_tasks=8,
            num_context=3,
            num_target=20,
            num_samples=300,
            oracle=ExactLinearOracle(model),
            seed=11,
            method_options={"nuts": {"num_warmup": 100, "num_chains": 2, "jit_compile": True}},
        )
    o, nuts = table.rows
    print(table.to_markdown())
    assert abs(nuts["nll_gap"]) < 3 * nuts["nll_gap_se"] + 0.02, nuts
    assert abs(nuts["mse"] - o["mse"]) < 0.05 * o["mse"] + 0.005, (nuts["mse"], o["mse"])
    assert nuts["divergences"] == 0 and nuts["min_ess"] > 50 and nuts["max_r_hat"] < 1.1


class _LabelTasks:
    """Three-class episodes: ``b_t ~ N(0, I_3)``, ``y ~ Categorical(logits = b_t + x w)``."""

    w = torch.tensor([1.5, 0.0, -1.5])

    def sample(self, num_tasks, num_context, num_target, generator=None):
        n = num_context + num_target
        b = torch.randn(num_tasks, 1, 3, generator=generator)
        x = 4 * torch.rand(num_tasks, n, 1, generator=generator) - 2
        probs = torch.softmax(b + x * self.w, -1)
        y = torch.multinomial(probs.reshape(-1, 3), 1, generator=generator).reshape(num_tasks, n)
        return TaskBatch(x[:, :num_context], y[:, :num_context], x[:, num_context:], y[:, num_context:])


class _Classifier(MetaModel):
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(_LabelTasks.w.clone())
        self.q_loc = nn.Parameter(torch.tensor([0.5, 0.0, -0.5]))

    def model(self, batch):
        with task_plate(batch):
            b = pyro.sample("b", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            observe(batch, lambda x: dist.Categorical(logits=b + x * self.w))

    def guide(self, batch):
        with task_plate(batch):
            pyro.sample("b", dist.Normal(self.q_loc.expand(batch.num_tasks, 1, 3), 0.7).to_event(1))


def test_classification_rows_score_the_predictive_class_probabilities():
    tasks, model, seed, T = _LabelTasks(), _Classifier(), 5, 12
    table = evaluate(
        model, tasks, methods="amortized", num_tasks=T, num_context=4, num_target=15, num_samples=300, seed=seed
    )
    row = table.rows[0]
    assert {"accuracy", "ece", "brier", "nll"} <= set(row) and "mse" not in row and "crps" not in row
    batch = tasks.sample(T, 4, 15, generator=torch.Generator().manual_seed(seed))
    post = pyro_meta.infer(model, batch, method="amortized", num_samples=300, seed=seed)
    b = post.samples["b"].reshape(-1, T, 1, 3)
    probs = torch.softmax(b + batch.target_x * model.w.detach(), -1).mean(0)  # [T, Nt, 3]
    m = batch.target_mask
    assert_close(
        torch.tensor(row["accuracy"]),
        torch.tensor(metrics.accuracy(probs, batch.target_y, m)),
        atol=1e-9,
        what="accuracy",
    )
    assert_close(
        torch.tensor(row["brier"]), torch.tensor(metrics.brier_score(probs, batch.target_y, m)), atol=1e-5, what="brier"
    )
    ece, _ = metrics.expected_calibration_error(probs, batch.target_y, m)
    assert_close(torch.tensor(row["ece"]), torch.tensor(ece), atol=1e-5, what="ece")
    nll = -torch.gather(probs, -1, batch.target_y[..., None]).log().mean()
    assert_close(torch.tensor(row["nll"]), nll.double(), atol=1e-5, what="classification nll")


def test_bad_inputs_raise():
    tasks, model = LinearTasks(), BayesianLinear()
    with pytest.raises(TypeError, match="MetaModel"):
        evaluate(object(), tasks)
    with pytest.raises(TypeError, match="MetaModel"):
        evaluate({"a": model, "b": "not a model"}, tasks)
    with pytest.raises(TypeError, match="task distribution"):
        evaluate(model, [1, 2, 3])
    with pytest.raises(ValueError, match="methods"):
        evaluate(model, tasks, methods=["amortised"])
    with pytest.raises(ValueError, match="method_options"):
        evaluate(model, tasks, methods=["amortized"], method_options={"nutz": {}})
    with pytest.raises(TypeError, match="method_options"):
        evaluate(model, tasks, methods=["nuts"], method_options={"nuts": 3})
    for bad in (0, -2, 2.5, [], [3, 0], "5", True):
        with pytest.raises(ValueError, match="num_context"):
            evaluate(model, tasks, num_context=bad)
    for name in ("num_tasks", "num_target", "num_samples"):
        with pytest.raises(ValueError, match=name):
            evaluate(model, tasks, **{name: 0})
    with pytest.raises(TypeError, match="oracle"):
        evaluate(model, tasks, oracle=object())
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(None, tasks)


def test_method_options_can_set_num_samples_per_method(linear):
    tasks, model = linear
    table = evaluate(
        model,
        tasks,
        methods=["amortized", "importance"],
        num_tasks=3,
        num_context=2,
        num_target=4,
        num_samples=10,
        method_options={"importance": {"num_samples": 30, "num_proposals": 100}},
    )
    post = pyro_meta.infer(
        model,
        tasks.sample(3, 2, 4, generator=torch.Generator().manual_seed(0)),
        method="importance",
        num_samples=30,
        num_proposals=100,
        seed=0,
    )
    assert_close(
        torch.tensor(table.rows[1]["crps"]),
        torch.tensor(metrics.crps(post.predict().samples, post.batch.target_y, post.batch.target_mask)),
        atol=1e-9,
        what="crps with 30 draws",
    )


def test_table_exports_and_names(tmp_path, linear):
    tasks, model = linear
    twin = BayesianLinear()
    table = evaluate([model, twin], tasks, num_tasks=4, num_context=[2, 3], num_target=5, num_samples=20)
    assert table.column("model") == ["BayesianLinear", "BayesianLinear_2"] * 2
    md = table.to_markdown(columns=["model", "num_context", "nll"])
    lines = md.strip().splitlines()
    assert lines[0] == "| model | num_context | nll |" and len(lines) == 2 + 4
    assert lines[2].startswith("| BayesianLinear | 2 | ") and f"{table.rows[0]['nll']:.3f}" in lines[2]
    table.to_csv(tmp_path / "t.csv")
    with open(tmp_path / "t.csv") as f:
        back = list(csv.DictReader(f))
    assert [float(r["nll"]) for r in back] == table.column("nll") and list(back[0]) == table.columns
    df = table.to_pandas()
    assert list(df.columns) == table.columns and len(df) == 4
    assert len(table + table) == 8 and len(table.select(num_context=3)) == 2


def test_beating_oracle_flags_a_row_better_than_the_oracle_beyond_its_error():
    rows = [
        {"model": "O", "method": "oracle", "num_context": 5, "nll": 1.0, "nll_se": 0.1, "mse": 1.0, "mse_se": 0.1},
        {
            "model": "A",
            "method": "nuts",
            "num_context": 5,
            "nll": 0.95,
            "nll_gap": -0.05,
            "nll_gap_se": 0.03,
            "mse": 0.9,
            "mse_se": 0.1,
        },
        {
            "model": "B",
            "method": "nuts",
            "num_context": 5,
            "nll": 0.8,
            "nll_gap": -0.2,
            "nll_gap_se": 0.03,
            "mse": 0.5,
            "mse_se": 0.1,
        },
    ]
    table = EvaluationTable(rows)
    assert table.beating_oracle("nll").column("model") == ["B"]
    assert table.beating_oracle("mse").column("model") == ["B"]
    with pytest.raises(ValueError, match="metric"):
        table.beating_oracle("crps")


@pytest.mark.slow
def test_no_trained_model_beats_the_sinusoid_oracle():
    """Issue 5: a small meta-trained NeuralProcess does not beat the Bayes-optimal predictive beyond noise."""
    tasks = Sinusoid(noise_std=0.3)
    model = NeuralProcess(latent_dim=8, hidden=32)
    pyro_meta.fit(
        model,
        tasks,
        num_steps=400,
        tasks_per_batch=16,
        num_context=(2, 10),
        num_target=10,
        lr=3e-3,
        progress=False,
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = evaluate(
            model,
            tasks,
            methods=["amortized", "importance"],
            num_tasks=50,
            num_context=[2, 5],
            num_target=20,
            oracle=SinusoidOracle(tasks),
            num_samples=100,
            method_options={"importance": {"num_proposals": 1000}},
        )
    print(table.to_markdown())
    assert len(table.select(method="oracle")) == 2
    assert len(table.beating_oracle("nll")) == 0, table.beating_oracle("nll").to_markdown()
    assert len(table.beating_oracle("mse")) == 0, table.beating_oracle("mse").to_markdown()
    for r in table.select(model="NeuralProcess"):
        assert r["nll_gap"] > 0 and r["nll_gap_se"] > 0


def test_evaluate_accepts_a_fixed_task_batch_and_re_splits_it(linear):
    """A fixed TaskBatch of real tasks (as fit accepts): ``num_context`` is a seeded split of each task's points."""
    tasks, model = linear
    data = tasks.sample(6, 4, 6, generator=torch.Generator().manual_seed(5))
    kw = dict(methods=["amortized"], num_context=[2, 5], num_samples=40, seed=1)
    a, b = evaluate(model, data, **kw), evaluate(model, data, **kw)
    assert _strip(a) == _strip(b)
    assert [r["num_context"] for r in a.rows] == [2, 5] and all(r["num_tasks"] == 6 for r in a.rows)
    # every task has 10 points: 5 context leaves 5 targets; more context, better predictions (on average)
    assert a.rows[1]["nll"] < a.rows[0]["nll"]
    with pytest.raises(ValueError, match="fewer than|too few|points"):
        evaluate(model, data, num_context=11)


def test_callback_gets_each_runs_row_and_posterior(linear):
    """``callback(row, posterior)``: once per model x method x size, with the table's row and that run's posterior."""
    tasks, model = linear
    seen = []
    table = evaluate(
        model,
        tasks,
        methods=["amortized", "importance"],
        num_tasks=3,
        num_context=[2, 4],
        num_target=5,
        seed=1,
        method_options=FAST,
        oracle=ExactLinearOracle(model),
        num_samples=50,
        callback=lambda row, post: seen.append((row, post)),
    )
    model_rows = [r for r in table.rows if r["method"] != "oracle"]
    assert [row for row, _ in seen] == model_rows and len(seen) == 4
    for row, post in seen:
        assert post.method == row["method"] and post.batch.num_tasks == 3
        assert int(post.batch.context_mask.sum(-1).max()) == row["num_context"]
        # the row's MSE is that posterior's predictive mean against the targets (recomputed here)
        mean = post.predict().mean
        assert_close(metrics.mse(mean, post.batch.target_y, post.batch.target_mask), row["mse"], rtol=0.2)
    with pytest.raises(TypeError, match="callback must be a callable"):
        evaluate(model, tasks, num_tasks=2, callback=3)


def test_a_user_registered_method_runs_through_infer_evaluate_and_to_arviz(linear, monkeypatch):
    """The plug-in API: a method registered by name is an ordinary ``method=`` for infer, evaluate and the export."""
    import pyro_meta.inference.method as method_module
    from pyro_meta.inference import InferenceMethod, InferenceResult, Option, available_methods, register_method

    monkeypatch.setattr(method_module, "_REGISTRY", dict(method_module._REGISTRY))  # undone after the test

    class ExactDraws(InferenceMethod):
        """Draws from ``BayesianLinear.exact_posterior``: ``w_t ~ N(m_t, S_t)``."""

        name = "exact_draws"
        options = {"shrink": Option(1.0)}

        def run(self, problem, num_samples, shrink):
            mean, cov = problem.model.exact_posterior(problem.batch)  # [T, K], [T, K, K]
            eps = torch.randn(num_samples, *mean.shape)
            return InferenceResult(
                samples={"w": (mean + shrink * (torch.linalg.cholesky(cov) @ eps[..., None])[..., 0])[None]}
            )

    register_method(ExactDraws)
    assert "exact_draws" in available_methods()
    tasks, model = linear
    batch = tasks.sample(5, 3, 20, generator=torch.Generator().manual_seed(4))
    post = pyro_meta.infer(model, batch, method="exact_draws", num_samples=400, seed=0)
    mean, _ = model.exact_posterior(batch)
    assert post.samples["w"].shape == (1, 400, 5, mean.shape[-1])
    assert_close(post.samples["w"].mean((0, 1)), mean, atol=0.15, what="posterior mean of the registered method")
    idata = post.to_arviz()
    assert idata.posterior["w"].dims[:3] == ("chain", "draw", "task") and "log_likelihood" in idata.groups()
    table = evaluate(
        model,
        tasks,
        methods=["exact_draws"],
        num_tasks=6,
        num_context=3,
        num_target=20,
        num_samples=300,
        oracle=ExactLinearOracle(model),
        seed=2,
    )
    exact = table.rows[-1]
    assert exact["method"] == "exact_draws"
    assert abs(exact["nll_gap"]) < 3 * exact["nll_gap_se"] + 0.02, exact  # exact draws: the closed form's NLL
    overconfident = evaluate(
        model,
        tasks,
        methods=["exact_draws"],
        num_tasks=6,
        num_context=3,
        num_target=20,
        num_samples=300,
        oracle=ExactLinearOracle(model),
        seed=2,
        method_options={"exact_draws": {"shrink": 0.0}},
    )
    assert overconfident.rows[-1]["nll"] > exact["nll"]  # the option reaches the method
