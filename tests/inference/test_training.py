"""fit under faults: the NaN guard, checked options, interrupts at any point, resume equality."""

import math
import os
import signal

import pytest
import torch

import pyro_meta
from pyro_meta import CheckpointError
from pyro_meta.data import LinearTasks
from pyro_meta.models import BayesianLinear

FIT = dict(num_steps=30, tasks_per_batch=8, lr=0.05, progress=False, seed=3)


class NaNGradientAt(BayesianLinear):
    """The issue's reproducer: ``0 * sqrt(mu.sum() - mu.sum())`` is a finite loss with a NaN gradient."""

    def __init__(self, bad_call: int = 11):
        super().__init__()
        self.bad_call, self.calls = bad_call, 0

    def loss(self, batch):
        self.calls += 1
        loss = super().loss(batch)
        if self.calls == self.bad_call:
            loss = loss + 0.0 * torch.sqrt(self.mu.sum() - self.mu.sum())
        return loss


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _no_temp_files(folder):
    return not any(p.name.startswith(".ckpt-") for p in folder.iterdir())


def test_nan_gradient_with_finite_loss_keeps_the_last_good_state(tmp_path):
    """Bug on main: the NaN gradient was stepped and c.pt then held all-NaN mu."""
    path = tmp_path / "c.pt"
    model = NaNGradientAt(11)
    with pytest.raises(FloatingPointError, match=r"gradient of mu at step 10"):
        pyro_meta.fit(model, LinearTasks(), checkpoint=path, checkpoint_every=5, **FIT)
    clean = BayesianLinear()
    pyro_meta.fit(clean, LinearTasks(), **dict(FIT, num_steps=10))
    _assert_same(_state(model), _state(clean))  # in memory: the state after the 10 good steps
    saved = pyro_meta.load_checkpoint(path)  # on disk too (written when the step failed), and finite
    assert saved["step"] == 10 and len(saved["losses"]) == 10
    _assert_same(saved["model"], _state(clean))
    # resuming from it (the bad term gone) ends where an uninterrupted run ends
    resumed = BayesianLinear()
    pyro_meta.fit(resumed, LinearTasks(), checkpoint=path, resume=True, **FIT)
    full = BayesianLinear()
    pyro_meta.fit(full, LinearTasks(), **FIT)
    _assert_same(_state(resumed), _state(full))
    assert _no_temp_files(tmp_path)


def test_a_step_that_overflows_the_optimizer_state_is_undone(tmp_path):
    class Huge(BayesianLinear):
        calls = 0

        def loss(self, batch):
            Huge.calls += 1
            scale = 1e25 if Huge.calls == 5 else 1.0  # finite loss and gradient; Adam's exp_avg_sq overflows
            return super().loss(batch) * scale

    model = Huge()
    with pytest.raises(FloatingPointError, match=r"optimizer step at step 4 made optimizer state 'exp_avg_sq'"):
        pyro_meta.fit(model, LinearTasks(), checkpoint=tmp_path / "c.pt", checkpoint_every=1, **FIT)
    clean = BayesianLinear()
    res = pyro_meta.fit(clean, LinearTasks(), **dict(FIT, num_steps=4))
    _assert_same(_state(model), _state(clean))
    saved = pyro_meta.load_checkpoint(tmp_path / "c.pt")
    assert saved["step"] == 4
    for k, v in res.optimizer.state_dict()["state"].items():  # the optimizer state of step 4, finite
        for slot, value in v.items():
            assert torch.equal(saved["optimizer"]["state"][k][slot], value), slot


def test_non_finite_loss_names_the_step(tmp_path):
    class NaNLoss(BayesianLinear):
        calls = 0

        def loss(self, batch):
            NaNLoss.calls += 1
            return super().loss(batch) * (math.nan if NaNLoss.calls == 3 else 1.0)

    with pytest.raises(FloatingPointError, match="non-finite loss nan at step 2"):
        pyro_meta.fit(NaNLoss(), LinearTasks(), checkpoint=tmp_path / "c.pt", **FIT)
    assert pyro_meta.load_checkpoint(tmp_path / "c.pt")["step"] == 2


class NoTraining(BayesianLinear):
    def loss(self, batch):  # a malformed option must be refused before any step
        raise AssertionError("training started")


@pytest.mark.parametrize(
    "kw, exc, name",
    [
        ({"clip_norm": -1.0}, ValueError, "clip_norm"),  # main: gradient ascent
        ({"clip_norm": 0.0}, ValueError, "clip_norm"),  # main: no training
        ({"clip_norm": math.nan}, ValueError, "clip_norm"),
        ({"lr_decay": 0.0}, ValueError, "lr_decay"),  # main: lr 0 after step 1
        ({"lr_decay": 1.5}, ValueError, "lr_decay"),
        ({"lr_decay": -0.5}, ValueError, "lr_decay"),
        ({"lr": 0.0}, ValueError, "lr"),
        ({"lr": -1e-3}, ValueError, "lr"),
        ({"lr": math.inf}, ValueError, "lr"),
        ({"lr": "0.1"}, TypeError, "lr"),
        ({"checkpoint_every": -1}, ValueError, "checkpoint_every"),
        ({"checkpoint_every": True}, ValueError, "checkpoint_every"),
        ({"num_steps": True}, ValueError, "num_steps"),
        ({"num_steps": 10.0}, ValueError, "num_steps"),
        ({"tasks_per_batch": True}, ValueError, "tasks_per_batch"),
        ({"tasks_per_batch": 0}, ValueError, "tasks_per_batch"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**32}, ValueError, "seed"),
        ({"progress": "yes"}, TypeError, "progress"),
        ({"resume": 1}, TypeError, "resume"),
        ({"resume": True}, ValueError, "resume"),  # without a checkpoint
        ({"callback": 3}, TypeError, "callback"),
        ({"optimizer": "lbfgs2"}, ValueError, "optimizer"),
        ({"optimizer": torch.nn.Linear}, TypeError, "optimizer"),
        ({"optimizer": 3}, TypeError, "optimizer"),
        ({"device": "gpu0"}, ValueError, "device"),
        ({"num_context": (5, 2)}, ValueError, "num_context"),
        ({"num_context": -1}, ValueError, "num_context"),
        ({"num_target": (1.5, 3)}, ValueError, "num_target"),
        ({"checkpoint": 3}, TypeError, "checkpoint"),
        ({"guide_objective": "kl"}, ValueError, "guide_objective"),
        ({"guide_objective": None}, TypeError, "guide_objective"),
        ({"guide_particles": 0}, ValueError, "guide_particles"),  # checked even when the ELBO does not use it
        ({"checkpoint_meta": [("a", 1)]}, TypeError, "checkpoint_meta"),
        ({"checkpoint_meta": {"config": {}}}, ValueError, "checkpoint_meta"),
    ],
)
def test_bad_options_are_refused_before_training(kw, exc, name):
    with pytest.raises(exc, match=name):
        pyro_meta.fit(NoTraining(), LinearTasks(), **dict(dict(FIT, num_steps=2), **kw))


def test_checkpoint_every_0_writes_only_at_the_end(tmp_path):
    path = tmp_path / "c.pt"
    seen = []
    result = pyro_meta.fit(
        BayesianLinear(),
        LinearTasks(),
        checkpoint=path,
        checkpoint_every=0,
        callback=lambda step, loss, model: seen.append(path.exists()),
        **FIT,
    )
    assert seen == [False] * 30  # no periodic checkpoint during training
    assert pyro_meta.load_checkpoint(path)["step"] == result.num_steps == 30


def test_resume_with_another_optimizer_names_both(tmp_path):
    path = tmp_path / "c.pt"
    pyro_meta.fit(BayesianLinear(), LinearTasks(), checkpoint=path, **dict(FIT, num_steps=3))
    with pytest.raises(CheckpointError, match=r"torch\.optim\.adam\.Adam.*torch\.optim\.sgd\.SGD"):
        pyro_meta.fit(BayesianLinear(), LinearTasks(), checkpoint=path, resume=True, optimizer="sgd", **FIT)


class InterruptAt(BayesianLinear):
    """Raises KeyboardInterrupt inside the loss of one call (mid-step, after the batch was drawn)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def loss(self, batch):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().loss(batch)


def test_interrupt_mid_step_resumes_exactly(tmp_path):
    """The checkpoint records the RNG state of the interrupted step's start, so the resumed run redraws its batch."""
    path = tmp_path / "c.pt"
    with pytest.warns(UserWarning, match="interrupted at step 7"):
        res = pyro_meta.fit(InterruptAt(8), LinearTasks(), checkpoint=path, checkpoint_every=5, **FIT)
    assert res.interrupted and res.num_steps == 7 and pyro_meta.load_checkpoint(path)["step"] == 7
    resumed = BayesianLinear()
    pyro_meta.fit(resumed, LinearTasks(), checkpoint=path, resume=True, **FIT)
    full = BayesianLinear()
    pyro_meta.fit(full, LinearTasks(), **FIT)
    _assert_same(_state(resumed), _state(full))
    assert _no_temp_files(tmp_path)


def test_sigint_during_the_optimizer_step_completes_the_step(tmp_path):
    class SignalInStep(torch.optim.Adam):
        steps = 0

        def step(self, closure=None):
            SignalInStep.steps += 1
            if SignalInStep.steps == 4:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between the parameter updates
            return super().step(closure)

    path = tmp_path / "c.pt"
    with pytest.warns(UserWarning, match="interrupted"):
        res = pyro_meta.fit(BayesianLinear(), LinearTasks(), checkpoint=path, optimizer=SignalInStep, **FIT)
    assert res.interrupted and res.num_steps == 4 and len(res.losses) == 4  # the 4th step committed whole
    resumed = BayesianLinear()
    pyro_meta.fit(resumed, LinearTasks(), checkpoint=path, resume=True, optimizer=SignalInStep, **FIT)
    full = BayesianLinear()
    pyro_meta.fit(full, LinearTasks(), **FIT)
    _assert_same(_state(resumed), _state(full))


def test_sigint_during_setup_returns_a_result_after_the_first_step(tmp_path):
    class SignalOnFirstDraw(LinearTasks):
        draws = 0

        def sample(self, *args, **kwargs):
            SignalOnFirstDraw.draws += 1
            if SignalOnFirstDraw.draws == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return super().sample(*args, **kwargs)

    path = tmp_path / "c.pt"
    with pytest.warns(UserWarning, match="interrupted at step 1"):
        res = pyro_meta.fit(BayesianLinear(), SignalOnFirstDraw(), checkpoint=path, **FIT)
    assert res.interrupted and res.num_steps == 1
    assert pyro_meta.load_checkpoint(path)["step"] == 1 and _no_temp_files(tmp_path)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    """A SIGKILL during a write leaves a .ckpt- temp file; the next check_writable removes it."""
    dead = tmp_path / ".ckpt-999999999-abc"  # a pid that cannot exist
    dead.write_bytes(b"partial")
    mine = tmp_path / f".ckpt-{os.getpid()}-def"  # a live writer's file is left alone
    mine.write_bytes(b"in progress")
    foreign = tmp_path / ".ckpt-notes"  # not written by save_checkpoint
    foreign.write_bytes(b"x")
    pyro_meta.fit(BayesianLinear(), LinearTasks(), checkpoint=tmp_path / "c.pt", **dict(FIT, num_steps=2))
    assert not dead.exists() and mine.exists() and foreign.exists()
