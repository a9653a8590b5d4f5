"""Fuzz the options of infer, fit, evaluate, Posterior and the memory budget: one bad value at a time."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyro_meta
import pyro_meta.arviz  # noqa: F401 - imported here, not inside a timed call (ArviZ's first import takes seconds)
from pyro_meta.data import LinearTasks, TaskBatch
from pyro_meta.models import BayesianLinear

from ._check import expect_clear_error

NOT_INT = [True, False, 1.5, "3", None, math.nan, [2], torch.tensor([1, 2])]
NOT_FLOAT = [True, "0.1", None, [0.1], torch.ones(2), 1j]
NON_FINITE = [math.nan, math.inf, -math.inf]


def bad_int(minimum: int):
    """Values an int option with this minimum must refuse."""
    return st.sampled_from(NOT_INT + [minimum - 1, minimum - 10])


def bad_positive_float():
    return st.sampled_from(NOT_FLOAT + NON_FINITE + [0.0, -1.0, -1e-9])


def bad_bool():
    return st.sampled_from([1, 0, "yes", "False", None, 2.0, np.bool_(True)])


# per method: option -> strategy of values it must refuse
METHOD_OPTIONS = {
    "svi": {
        "num_steps": bad_int(0),
        "lr": bad_positive_float(),
        "num_particles": bad_int(1),
        "final_lr_ratio": st.sampled_from(NOT_FLOAT + NON_FINITE + [0.0, 1.5, -0.1]),
        "num_init_draws": bad_int(2),
        "max_full_rank": bad_int(0),
    },
    "importance": {
        "num_proposals": bad_int(1),
        "widen": bad_positive_float(),
        "num_init_draws": bad_int(2),
        "batch_size": bad_int(1),
        "min_ess": st.sampled_from(NOT_FLOAT[:-2] + [math.nan, -1.0]),
        "proposal": st.sampled_from(["Guide", "", 3, None, ["guide"]]),
        "defensive": st.sampled_from(NOT_FLOAT + NON_FINITE + [-0.1, 1.5]),
    },
    "nuts": {
        "num_warmup": bad_int(0),
        "num_chains": bad_int(1),
        "init": st.sampled_from(["random", "", 3, None]),
        "chunk_size": st.sampled_from([0, -1, True, 1.5, "2"]),
        "jit_compile": bad_bool(),
        "rhat_threshold": st.sampled_from(NOT_FLOAT + NON_FINITE + [0.5, 0.99]),
        "ess_threshold": st.sampled_from([-1.0, math.nan, True, "100"]),
        "target_accept_prob": st.sampled_from([0.0, 1.0, 2.0, -0.5, math.nan, True, "0.8"]),
        "step_size": bad_positive_float(),
        "adapt_step_size": bad_bool(),
        "adapt_mass_matrix": bad_bool(),
        "full_mass": bad_bool(),
        "max_tree_depth": st.sampled_from([0, -1, True, 1.5, "5"]),
    },
    "hmc": {
        "num_steps": st.sampled_from([0, -1, True, 1.5, "5"]),
        "trajectory_length": bad_positive_float(),
        "num_chains": bad_int(1),
    },
}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = BayesianLinear()
    batch = LinearTasks().sample(3, 4, 5, generator=torch.Generator().manual_seed(0))
    return model, batch


@given(st.data())
def test_malformed_infer_arguments_name_the_argument(setup, data):
    model, batch = setup
    draw = data.draw
    kw = {"method": "amortized", "num_samples": 8}
    kind = draw(
        st.sampled_from(
            [
                "method",
                "num_samples",
                "seed",
                "globals",
                "progress",
                "unknown",
                "option",
                "option",
                "option",
                "model",
                "batch",
                "nuts_draws",
            ]
        )
    )
    args = [model, batch]
    if kind == "method":
        kw["method"], names = draw(st.sampled_from(["laplace", "", "NUTS", 3, None, ["nuts"]])), ("method",)
    elif kind == "num_samples":
        kw["num_samples"], names = draw(bad_int(1)), ("num_samples",)
    elif kind == "seed":
        kw["seed"], names = draw(st.sampled_from([-1, 2**32, 1.5, True, "0", [0]])), ("seed",)
    elif kind == "globals":
        kw["globals"], names = draw(st.sampled_from(["points", "", None, True, 1])), ("globals",)
    elif kind == "progress":
        kw["progress"], names = draw(st.sampled_from([1, "yes", 2.0])), ("progress",)
    elif kind == "unknown":
        kw["method"] = draw(st.sampled_from(["amortized", "svi", "importance", "nuts", "prior"]))
        name = draw(
            st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
                lambda s: s not in pyro_meta.get_method(kw["method"]).options
            )
        )
        kw[name], names = 1, (name,)
    elif kind == "option":
        method = draw(st.sampled_from(sorted(METHOD_OPTIONS)))
        name = draw(st.sampled_from(sorted(METHOD_OPTIONS[method])))
        kw.update(method=method, **{name: draw(METHOD_OPTIONS[method][name])})
        names = (name,)
    elif kind == "model":
        args[0], names = (
            draw(st.sampled_from([torch.nn.Linear(1, 1), None, "model", BayesianLinear])),
            ("model", "MetaModel"),
        )
    elif kind == "batch":
        args[1] = draw(st.sampled_from([None, batch.context_x, {"context_x": batch.context_x}, [batch]]))
        names = ("batch", "TaskBatch")
    else:  # NUTS needs 4 draws per chain for R-hat and ESS
        kw.update(method=draw(st.sampled_from(["nuts", "hmc"])), num_samples=draw(st.integers(1, 3)), num_warmup=2)
        names = ("num_samples",)
    expect_clear_error("infer", lambda: pyro_meta.infer(*args, **kw), names)


class NoTraining(BayesianLinear):
    def loss(self, batch):  # a malformed option must be refused before any step
        raise AssertionError("training started")


class Sampler:
    """A task distribution whose sample() returns the wrong thing."""

    def __init__(self, value):
        self.value = value

    def sample(self, num_tasks, num_context, num_target, generator=None):
        return self.value


FIT_OPTIONS = {
    "num_steps": bad_int(0),
    "tasks_per_batch": bad_int(1),
    "lr": bad_positive_float(),
    "seed": st.sampled_from([-1, 2**32, 1.5, True, "0"]),
    "progress": bad_bool(),
    "clip_norm": bad_positive_float().filter(lambda v: v is not None),  # None: no clipping
    "lr_decay": st.sampled_from([v for v in NOT_FLOAT if v is not None] + NON_FINITE + [0.0, -0.5, 1.01]),
    "checkpoint_every": bad_int(0),
    "resume": bad_bool(),
    "callback": st.sampled_from([3, "print", [print]]),
    "optimizer": st.sampled_from(["lbfgs2", "", 3, torch.nn.Linear, None]),
    "device": st.sampled_from(["gpu0", "cuda:x", 3.5, []]),
    "num_context": st.sampled_from([-1, (5, 2), (1.5, 3), (1, 2, 3), "5", True]),
    "num_target": st.sampled_from([-1, (5, 2), (0, "a"), 2.5]),
    "guide_objective": st.sampled_from(["kl", "", "ELBO", 3, None, ["iwae"]]),
    "guide_particles": bad_int(1),
    "checkpoint_meta": st.sampled_from([3, "meta", [("a", 1)], {"model_args": {}}, {"config": 1}]),
}


@given(st.data())
def test_malformed_fit_arguments_name_the_argument(tmp_path_factory, data):
    draw = data.draw
    kw = {"num_steps": 2, "progress": False}
    tasks = LinearTasks()
    kind = draw(st.sampled_from(["option"] * 6 + ["tasks", "checkpoint", "model", "fixed_set"]))
    model = NoTraining()
    if kind == "option":
        name = draw(st.sampled_from(sorted(FIT_OPTIONS)))
        kw[name], names = draw(FIT_OPTIONS[name]), (name,)
    elif kind == "tasks":
        tasks = draw(st.sampled_from([[1, 2], None, torch.zeros(3), Sampler(None), Sampler(torch.zeros(2))]))
        names = ("tasks",)
    elif kind == "checkpoint":
        folder = tmp_path_factory.mktemp("ckpt")
        foreign = folder / "data.csv"
        foreign.write_text("a,b\n1,2\n")
        kw["checkpoint"] = draw(st.sampled_from([3, folder, foreign, ["c.pt"]]))
        names = ("checkpoint", str(folder))
    elif kind == "model":
        model, names = draw(st.sampled_from([torch.nn.Linear(1, 1), None, BayesianLinear])), ("model",)
    else:
        fixed = LinearTasks().sample(4, 3, 3, generator=torch.Generator().manual_seed(0))
        tasks, case = draw(st.sampled_from([(fixed, "size"), (fixed.without_target_y(), "target")]))
        kw["tasks_per_batch"] = 8 if case == "size" else 2
        names = ("tasks_per_batch",) if case == "size" else ("target_y",)
    expect_clear_error("fit", lambda: pyro_meta.fit(model, tasks, **kw), names)


class Oracle:
    def log_prob(self, batch):
        return torch.zeros(batch.target_mask.shape)


@given(st.data())
def test_malformed_evaluate_arguments_name_the_argument(setup, data):
    model, _ = setup
    draw = data.draw
    kw = {"methods": ["amortized"], "num_tasks": 2, "num_context": 2, "num_samples": 4}
    kind = draw(
        st.sampled_from(
            [
                "methods",
                "num_tasks",
                "num_context",
                "num_target",
                "seed",
                "method_options",
                "oracle",
                "num_samples",
                "progress",
                "model",
                "tasks",
            ]
        )
    )
    args = [model, LinearTasks()]
    if kind == "methods":
        kw["methods"], names = draw(st.sampled_from([["laplace"], [], [3], "nope", None])), ("methods",)
    elif kind == "num_tasks":
        kw["num_tasks"], names = draw(bad_int(1).filter(lambda v: v is not None)), ("num_tasks",)
    elif kind == "num_context":
        kw["num_context"], names = (
            draw(st.sampled_from([0, -1, [], [0], ["a"], True, 1.5, [2, None]])),
            ("num_context",),
        )
    elif kind == "num_target":
        kw["num_target"], names = draw(st.sampled_from([0, -1, True, 1.5, "5"])), ("num_target",)
    elif kind == "seed":
        kw["seed"], names = draw(st.sampled_from([True, 1.5, "0", None, -1])), ("seed",)
    elif kind == "method_options":
        kw["method_options"] = draw(
            st.sampled_from(
                [{"laplace": {}}, {"amortized": 3}, {"svi": {"lr": -1.0}}, {"importance": {"nope": 1}}, [("svi", {})]]
            )
        )
        names = ("method_options", "lr", "nope", "options")
    elif kind == "oracle":
        kw["oracle"], names = draw(st.sampled_from([Oracle(), 3, "oracle"])), ("oracle",)
    elif kind == "num_samples":
        kw["num_samples"], names = draw(bad_int(1)), ("num_samples",)
    elif kind == "progress":
        kw["progress"], names = draw(bad_bool()), ("progress",)
    elif kind == "model":
        args[0], names = (
            draw(st.sampled_from([torch.nn.Linear(1, 1), [torch.nn.Linear(1, 1)], {"m": 3}, 3])),
            ("model",),
        )
    else:
        args[1], names = draw(st.sampled_from([[1, 2], None, Sampler(None)])), ("tasks",)
    expect_clear_error("evaluate", lambda: pyro_meta.evaluate(*args, **kw), names)


@given(st.data())
def test_malformed_posterior_arguments_name_the_argument(setup, data):
    model, batch = setup
    draw = data.draw
    post = pyro_meta.infer(model, batch, num_samples=8, seed=0)
    kind = draw(
        st.sampled_from(
            [
                "predict_batch",
                "predict_num",
                "function_draws",
                "interval",
                "log_prob",
                "select",
                "with_num_draws",
                "to_arviz",
                "budget",
            ]
        )
    )
    if kind == "predict_batch":
        other = LinearTasks().sample(3, 4, 5, generator=torch.Generator().manual_seed(draw(st.integers(1, 99))))
        value = draw(st.sampled_from([other, batch.context_only(), batch.select([0, 1]), batch.context_x]))
        call, names = (lambda: post.predict(value)), ("batch",)
    elif kind == "predict_num":
        value = draw(bad_int(1).filter(lambda v: v is not None))
        call, names = (lambda: post.predict(num_samples=value)), ("num_samples",)
    elif kind == "function_draws":
        value = draw(bad_int(1).filter(lambda v: v is not None))
        call, names = (lambda: post.function_draws(num_functions=value)), ("num_functions",)
    elif kind == "interval":
        value = draw(st.sampled_from([0.0, 1.0, 1.5, -0.1, math.nan, "0.9", None, True]))
        pred = post.predict()
        call, names = (lambda: pred.interval(value)), ("prob",)
    elif kind == "log_prob":
        value = draw(
            st.sampled_from([torch.zeros(3, 5), torch.zeros(3, 5, 2), "y", torch.zeros(3, 5, 1, dtype=torch.long)])
        )
        pred = post.predict()
        call, names = (lambda: pred.log_prob(value)), ("y",)
    elif kind == "select":
        value = draw(st.sampled_from([[], [5], "all", [0.5], torch.zeros(4, dtype=torch.bool)]))
        call, names = (lambda: post.select(value)), ("index",)
    elif kind == "with_num_draws":
        value = draw(bad_int(1))
        call, names = (lambda: post.with_num_draws(value)), ("num",)
    elif kind == "to_arviz":
        name = draw(st.sampled_from(["predictive", "log_likelihood", "num_predictive_samples"]))
        value = (
            draw(st.sampled_from([1, "yes", None]))
            if name != "num_predictive_samples"
            else draw(bad_int(1).filter(lambda v: v is not None))
        )
        call, names = (lambda: post.to_arviz(**{name: value})), (name,)
    else:
        value = draw(st.sampled_from([0, -1, True, 1.5, "1GB", None]))
        call, names = (
            (
                lambda: (
                    pyro_meta.set_memory_budget(value)
                    if value is not None
                    else pyro_meta.memory_budget(value).__enter__()
                )
            ),
            ("nbytes",),
        )
    expect_clear_error("Posterior", call, names, allowed=(ValueError, TypeError, IndexError))


def test_valid_batch_from_tasks_is_not_refused():
    """The fuzz's bases are valid: a guard against a check that refuses everything."""
    batch = TaskBatch.from_tasks([(torch.zeros(2, 1), torch.zeros(2, 1))])
    post = pyro_meta.infer(BayesianLinear(), batch.with_targets(torch.zeros(3)), num_samples=4)
    assert post.predict(num_samples=2).samples.shape == (1, 2, 1, 3, 1)
