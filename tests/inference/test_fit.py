"""fit: meta-training recovers the task distribution; sources, checkpoints, interrupts, bad input."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_meta
from pyro_meta.data import LinearTasks, Sinusoid, TaskBatch
from pyro_meta.models import BayesianLinear


def test_fit_recovers_the_task_distribution():
    """Type-II ML through the ELBO recovers mu and s of LinearTasks (known answer)."""
    tasks = LinearTasks()
    model = BayesianLinear()
    result = pyro_meta.fit(
        model,
        tasks,
        num_steps=1200,
        tasks_per_batch=32,
        num_context=(3, 10),
        num_target=(10, 20),
        lr=0.03,
        lr_decay=0.02,
        progress=False,
        seed=0,
    )
    assert result.num_steps == 1200 and len(result.losses) == 1200
    assert result.final_loss < sum(result.losses[:50]) / 50
    # measured errors ~0.015 (seeds 0, 1); the bound leaves room for optimisation noise
    assert torch.allclose(model.mu, tasks.weight_mean, atol=0.05), model.mu
    assert torch.allclose(model.s, tasks.weight_scale, atol=0.05), model.s


def test_fit_from_a_fixed_taskbatch_draws_minibatches(generator):
    real = LinearTasks().sample(40, (3, 8), 10, generator=generator)
    model = BayesianLinear()
    seen = []

    class Spy(BayesianLinear):
        def loss(self, batch):
            seen.append(batch.num_tasks)
            return super().loss(batch)

    spy = Spy()
    pyro_meta.fit(spy, real, num_steps=5, tasks_per_batch=8, progress=False)
    assert seen == [8] * 5
    res = pyro_meta.fit(model, real, num_steps=200, tasks_per_batch=16, lr=0.05, progress=False)
    assert res.final_loss < res.losses[0]
    with pytest.raises(ValueError, match="tasks_per_batch"):
        pyro_meta.fit(model, real, num_steps=1, tasks_per_batch=41, progress=False)
    with pytest.raises(ValueError, match="target_y"):
        pyro_meta.fit(model, real.without_target_y(), num_steps=1, tasks_per_batch=4, progress=False)


def test_fit_uses_a_user_defined_task_class():
    class Fixed:
        def sample(self, num_tasks, num_context, num_target, generator=None):
            x = torch.linspace(-1, 1, 6).expand(num_tasks, 6)[..., None]
            return TaskBatch(x, 0.5 * x, x, 0.5 * x)

    model = BayesianLinear()
    res = pyro_meta.fit(model, Fixed(), num_steps=20, tasks_per_batch=2, progress=False)
    assert len(res.losses) == 20


def test_bad_arguments():
    model = BayesianLinear()
    with pytest.raises(TypeError, match="task distribution"):
        pyro_meta.fit(model, [1, 2, 3], num_steps=1, progress=False)
    with pytest.raises(TypeError, match="MetaModel"):
        pyro_meta.fit(torch.nn.Linear(1, 1), LinearTasks(), num_steps=1, progress=False)
    with pytest.raises(ValueError, match="num_steps"):
        pyro_meta.fit(model, LinearTasks(), num_steps=-1, progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        pyro_meta.fit(model, LinearTasks(), num_steps=1, optimizer="lbfgs2", progress=False)


def test_bare_pyro_param_is_refused():
    class Bare(BayesianLinear):
        def model(self, batch):
            pyro.param("stray", torch.zeros(1))
            super().model(batch)

    with pytest.raises(ValueError, match="stray"):
        pyro_meta.fit(Bare(), LinearTasks(), num_steps=1, progress=False)


def test_same_seed_same_losses():
    runs = []
    for _ in range(2):
        pyro.set_rng_seed(1)
        m = BayesianLinear()
        runs.append(pyro_meta.fit(m, Sinusoid(noise_std=0.3), num_steps=5, lr=0.01, progress=False, seed=4).losses)
    assert runs[0] == runs[1]


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    tasks = LinearTasks()
    full = BayesianLinear()
    pyro_meta.fit(full, tasks, num_steps=30, lr=0.05, progress=False, seed=2)
    path = tmp_path / "ckpt.pt"
    part = BayesianLinear()
    pyro_meta.fit(part, tasks, num_steps=12, lr=0.05, progress=False, seed=2, checkpoint=path, checkpoint_every=5)
    resumed = BayesianLinear()
    res = pyro_meta.fit(resumed, tasks, num_steps=30, lr=0.05, progress=False, seed=2, checkpoint=path, resume=True)
    assert res.num_steps == 30 and len(res.losses) == 30
    for k, v in full.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-6), k
    assert pyro_meta.read_checkpoint_meta(path)["step"] == 30  # verified; the payload is loaded weights-only
    assert pyro_meta.load_checkpoint(path)["step"] == 30
    assert not any(p.name.startswith(".ckpt-") for p in tmp_path.iterdir()), "temporary file left behind"


def test_interrupt_keeps_progress_and_writes_checkpoint(tmp_path):
    def stop(step, loss, model):
        if step == 7:
            raise KeyboardInterrupt

    path = tmp_path / "ckpt.pt"
    model = BayesianLinear()
    with pytest.warns(UserWarning, match="interrupted"):
        res = pyro_meta.fit(model, LinearTasks(), num_steps=50, progress=False, checkpoint=path, callback=stop)
    assert res.interrupted and res.num_steps == 7
    fresh = BayesianLinear()
    pyro_meta.load_checkpoint(path, fresh)
    assert torch.equal(fresh.mu, model.mu)


def test_interrupt_inside_a_plate_enter_leaves_pyro_runtime_clean(monkeypatch):
    """A Ctrl-C after a plate's dim is allocated but before its ``with`` block can exit (seen in CI) must not
    leave the dim taken: the next fit of the process would fail with 'collide at dim=-1'."""
    from pyro.poutine import runtime

    allocate, calls = runtime._DIM_ALLOCATOR.allocate, []

    def interrupted_allocate(name, dim):
        out = allocate(name, dim)
        calls.append(name)
        if name == "target_points" and len(calls) > 20:  # a few steps in, inside the model's trace
            monkeypatch.setattr(runtime._DIM_ALLOCATOR, "allocate", allocate)
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(runtime._DIM_ALLOCATOR, "allocate", interrupted_allocate)
    before = (list(runtime._PYRO_STACK), list(runtime._DIM_ALLOCATOR._stack))
    with pytest.warns(UserWarning, match="interrupted"):
        res = pyro_meta.fit(BayesianLinear(), LinearTasks(), num_steps=50, progress=False, seed=0)
    assert res.interrupted and 0 < res.num_steps < 50
    assert (list(runtime._PYRO_STACK), list(runtime._DIM_ALLOCATOR._stack)) == before
    again = pyro_meta.fit(BayesianLinear(), LinearTasks(), num_steps=3, progress=False, seed=0)
    assert again.num_steps == 3 and not again.interrupted


def test_callback_can_stop_and_non_finite_loss_raises():
    res = pyro_meta.fit(
        BayesianLinear(), LinearTasks(), num_steps=50, progress=False, callback=lambda step, loss, m: step >= 3
    )
    assert res.num_steps == 3

    class Broken(BayesianLinear):
        def loss(self, batch):
            return super().loss(batch) * float("nan")

    with pytest.raises(FloatingPointError, match="non-finite"):
        pyro_meta.fit(Broken(), LinearTasks(), num_steps=2, progress=False)


def test_progress_bar_runs(capsys):
    pyro_meta.fit(BayesianLinear(), LinearTasks(), num_steps=3, progress=True)
    assert "fit BayesianLinear" in capsys.readouterr().err


def test_custom_loss_is_used():
    class MSEOnly(BayesianLinear):
        def loss(self, batch):
            return (self.mu.sum() - 1.0) ** 2

    m = MSEOnly()
    pyro_meta.fit(m, LinearTasks(), num_steps=300, lr=0.05, progress=False)
    assert abs(float(m.mu.detach().sum()) - 1.0) < 1e-2


def test_dist_import_is_pyro():  # keeps the Pyro distributions namespace honest for users
    assert dist.Normal is pyro.distributions.Normal


def test_guide_objective_trains_the_guide_by_its_own_objective():
    """``guide_objective="sleep"``: the conjugate guide learns the exact posterior; the prior keeps the ELBO."""
    model = BayesianLinear()
    result = pyro_meta.fit(
        model,
        LinearTasks(),
        num_steps=300,
        tasks_per_batch=32,
        lr=0.05,
        progress=False,
        guide_objective="sleep",
        guide_particles=4,
    )
    assert len(result.guide_losses) == 300  # (its value moves with the model: not monotone)
    batch = LinearTasks().sample(8, 5, 5, generator=torch.Generator().manual_seed(3))
    mean, cov = model.exact_posterior(batch)
    q = pyro_meta.infer(model, batch, num_samples=4000, seed=0)
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert float(((q.mean() - mean).abs() / sd).mean()) < 0.2
    # the model's prior moved by its own loss (the ELBO): mu is no longer at its initial zeros
    assert float(model.mu.detach().abs().max()) > 0.1
    with pytest.raises(ValueError, match="guide_objective must be one of"):
        pyro_meta.fit(BayesianLinear(), LinearTasks(), num_steps=1, progress=False, guide_objective="kl")


def test_guide_objective_gradients_split_between_model_and_guide():
    """The guide's parameters get the objective's gradient only; the model's keep model.loss's."""
    from pyro_meta.inference.objectives import GuideObjective, sleep_loss

    model = BayesianLinear()
    batch = LinearTasks().sample(6, 4, 4, generator=torch.Generator().manual_seed(0))
    objective = GuideObjective("sleep", 4)
    with pyro_meta.local_params():
        objective._parameters(model, batch)  # finding the split runs the model and guide once (RNG)
        pyro.set_rng_seed(1)
        loss = model.loss(batch)
        objective.backward(model, batch, loss)
        got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        pyro.set_rng_seed(1)
        loss = model.loss(batch)
        elbo = dict(
            zip(
                [n for n, _ in model.named_parameters()],
                torch.autograd.grad(loss, list(model.parameters()), allow_unused=True),
            )
        )
        sleep = dict(
            zip(
                [n for n, _ in model.named_parameters()],
                torch.autograd.grad(sleep_loss(model, batch, 4), list(model.parameters()), allow_unused=True),
            )
        )
    for name in ("mu", "log_s"):  # the prior: the ELBO's gradient
        torch.testing.assert_close(got[name], elbo[name])
    for name in ("q_mu", "q_log_s", "q_log_noise"):  # the guide: the sleep phase's, not the ELBO's
        torch.testing.assert_close(got[name], sleep[name])
        assert not torch.allclose(got[name], elbo[name])


def test_checkpoint_meta_is_recorded_beside_model_args_and_config(tmp_path):
    path = tmp_path / "c.ckpt"
    model = BayesianLinear(degree=2)
    pyro_meta.fit(
        model,
        LinearTasks(),
        num_steps=2,
        progress=False,
        checkpoint=path,
        checkpoint_meta={"app": {"config": {"model": {"name": "BayesianLinear"}}, "labels": False}},
    )
    meta = pyro_meta.read_checkpoint_meta(path)["meta"]
    assert meta["app"] == {"config": {"model": {"name": "BayesianLinear"}}, "labels": False}
    assert meta["model_args"]["degree"] == 2 and meta["config"]["num_steps"] == 2
    with pytest.raises(ValueError, match="keys fit records itself: \\['config'\\]"):
        pyro_meta.fit(
            BayesianLinear(),
            LinearTasks(),
            num_steps=1,
            progress=False,
            checkpoint=path,
            checkpoint_meta={"config": {}},
        )
    with pytest.raises(TypeError, match="checkpoint_meta must be a dict"):
        pyro_meta.fit(BayesianLinear(), LinearTasks(), num_steps=1, progress=False, checkpoint_meta=[1])
