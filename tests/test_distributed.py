"""Data-parallel fit on two gloo processes (torch.multiprocessing.spawn) against one process with the combined batch.

MAML's meta-loss is deterministic given the batch (no Monte Carlo draw), so two ranks averaging their
gradients must give the parameters of one process whose batch is the two ranks' batches together
(``RankStreams`` draws exactly that batch), up to floating-point reduction order.
"""

import os
import shutil

import pytest
import torch

import pyro_meta
from pyro_meta.data import Sinusoid, concat_batches
from pyro_meta.distributed import DataParallel, RankStreams, rank_seed
from pyro_meta.models import MAML

from .spawn import run_workers

FIT = dict(num_context=5, num_target=10, lr=1e-2, seed=3, progress=False)
STEPS, PER_RANK = 100, 4


def _maml() -> MAML:
    torch.manual_seed(0)
    return MAML(hidden=(20, 20), inner_steps=1)


def _fixed_tasks():
    return Sinusoid(noise_std=0.1).sample(12, 5, 10, generator=torch.Generator().manual_seed(5))


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def train_worker(rank: int, world_size: int, out: str) -> None:
    """Each scenario's parameters and losses per rank, saved as ``out/<scenario>_<rank>.pt``."""
    tasks = Sinusoid(noise_std=0.1)
    model = _maml()
    ckpt, at60 = os.path.join(out, "run.ckpt"), os.path.join(out, "step60.ckpt")

    def keep_step_60(step, loss, model):  # rank 0 wrote the checkpoint of step 60 just before this call
        if step == 60 and rank == 0:
            shutil.copy(ckpt, at60)

    res = pyro_meta.fit(
        model,
        tasks,
        num_steps=STEPS,
        tasks_per_batch=PER_RANK,
        checkpoint=ckpt,
        checkpoint_every=30,
        callback=keep_step_60,
        **FIT,
    )
    torch.save({"params": _flat(model), "losses": res.losses}, os.path.join(out, f"stream_{rank}.pt"))

    # resume: a fresh model continues the step-60 checkpoint to step 100
    torch.distributed.barrier()
    model = _maml()
    res = pyro_meta.fit(model, tasks, num_steps=STEPS, tasks_per_batch=PER_RANK, checkpoint=at60, resume=True, **FIT)
    torch.save({"params": _flat(model), "losses": res.losses}, os.path.join(out, f"resumed_{rank}.pt"))

    # a fixed task set: the ranks share one permutation per step and take disjoint slices
    model = _maml()
    res = pyro_meta.fit(model, _fixed_tasks(), num_steps=30, tasks_per_batch=3, **FIT)
    torch.save({"params": _flat(model), "losses": res.losses}, os.path.join(out, f"fixed_{rank}.pt"))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp"))
    run_workers(train_worker, 2, out)
    return {
        f"{name}_{r}": torch.load(os.path.join(out, f"{name}_{r}.pt"))
        for name in ("stream", "resumed", "fixed")
        for r in (0, 1)
    } | {"dir": out}


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return bool(((a - b).norm() / b.norm()) < rel)


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_combined_batch(two_ranks):
    model = _maml()
    ref = pyro_meta.fit(
        model, RankStreams(Sinusoid(noise_std=0.1), 2, seed=3), num_steps=STEPS, tasks_per_batch=2 * PER_RANK, **FIT
    )
    got = two_ranks["stream_0"]
    assert torch.equal(got["params"], two_ranks["stream_1"]["params"])  # the ranks never drift apart
    assert _close(got["params"], _flat(model)), float((got["params"] - _flat(model)).norm() / _flat(model).norm())
    assert torch.allclose(torch.tensor(got["losses"]), torch.tensor(ref.losses), rtol=1e-4)
    # and training did something: far from the start, so agreement is not trivial
    assert not _close(got["params"], _flat(_maml()), rel=1e-2)


@pytest.mark.slow
def test_distributed_resume_continues_the_same_run(two_ranks):
    straight, resumed = two_ranks["stream_0"], two_ranks["resumed_0"]
    assert torch.equal(resumed["params"], straight["params"])
    assert resumed["losses"] == straight["losses"]
    header = pyro_meta.load_checkpoint(os.path.join(two_ranks["dir"], "run.ckpt"))
    assert header["step"] == STEPS and header["world_size"] == 2 and len(header["rank_states"]) == 2


@pytest.mark.slow
def test_two_ranks_on_a_fixed_task_set_equal_one_process_with_both_slices(two_ranks):
    model = _maml()
    pyro_meta.fit(model, _fixed_tasks(), num_steps=30, tasks_per_batch=6, **FIT)
    assert torch.equal(two_ranks["fixed_0"]["params"], two_ranks["fixed_1"]["params"])
    assert _close(two_ranks["fixed_0"]["params"], _flat(model))


def test_rank_streams_draws_each_ranks_tasks_from_its_seed():
    tasks = Sinusoid()
    both = RankStreams(tasks, 2, seed=7).sample(6, 4, 5)
    ranks = [tasks.sample(3, 4, 5, generator=torch.Generator().manual_seed(rank_seed(7, r))) for r in (0, 1)]
    assert torch.equal(both.context_x, torch.cat([b.context_x for b in ranks]))
    assert torch.equal(both.info["amplitude"], torch.cat([b.info["amplitude"] for b in ranks]))
    assert rank_seed(7, 0) == 7 and rank_seed(7, 1) != rank_seed(7, 2) != 7
    with pytest.raises(ValueError, match="multiple of world_size"):
        RankStreams(tasks, 2, seed=7).sample(5, 4, 5)


def test_concat_batches_pads_and_keeps_tasks_in_order(generator):
    a = Sinusoid().sample(2, 3, 4, generator=generator)
    b = Sinusoid().sample(3, 5, 2, generator=generator)
    both = concat_batches([a, b])
    assert both.num_tasks == 5 and both.num_points("context") == 5 and both.num_points("target") == 4
    assert torch.equal(both.select([2, 3, 4]).context_x, b.context_x)
    assert torch.equal(both.context_x[:2, :3], a.context_x) and not both.context_mask[:2, 3:].any()
    assert torch.equal(both.target_mask.sum(-1), torch.tensor([4, 4, 2, 2, 2]))
    with pytest.raises(ValueError, match="target_y"):
        concat_batches([a, b.without_target_y()])
    with pytest.raises(ValueError, match="empty"):
        concat_batches([])


def test_fit_distributed_true_without_a_process_group_is_refused():
    with pytest.raises(ValueError, match="process group"):
        pyro_meta.fit(_maml(), Sinusoid(), num_steps=1, distributed=True, progress=False)
    with pytest.raises(TypeError, match="distributed"):
        DataParallel.resolve("yes", 0)


CLI_MAML = """
[model]
name = "MAML"
[model.args]
hidden = [20, 20]
inner_steps = 1
[tasks]
name = "Sinusoid"
[tasks.args]
noise_std = 0.1
[train]
num_steps = 20
tasks_per_batch = 4
num_context = 5
num_target = 10
lr = 0.01
seed = 3
checkpoint_every = 10
[evaluate]
methods = ["amortized"]
"""


def cli_worker(rank: int, world_size: int, config: str, out: str) -> None:
    """``pyro-meta train`` as torchrun runs it: every rank calls the command in a process group."""
    from pyro_meta import cli

    assert cli.main(["train", "--config", config, "--out", out, "--no-progress"]) == 0


@pytest.mark.slow
def test_cli_train_under_a_process_group_is_data_parallel(tmp_path):
    import pyro

    config = tmp_path / "maml.toml"
    config.write_text(CLI_MAML)
    out = tmp_path / "run"
    run_workers(cli_worker, 2, str(config), str(out))
    header = pyro_meta.load_checkpoint(str(out / "checkpoint.ckpt"))
    assert header["step"] == 20 and header["world_size"] == 2
    got = _flat(pyro_meta.rebuild_model(str(out / "checkpoint.ckpt")))
    pyro.set_rng_seed(3)  # as the command builds its model
    model = MAML(hidden=(20, 20), inner_steps=1)
    pyro_meta.fit(
        model,
        RankStreams(Sinusoid(noise_std=0.1), 2, seed=3),
        num_steps=20,
        tasks_per_batch=8,
        num_context=5,
        num_target=10,
        lr=0.01,
        seed=3,
        progress=False,
    )
    assert _close(got, _flat(model)), float((got - _flat(model)).norm() / _flat(model).norm())
