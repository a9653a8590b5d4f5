"""infer_sharded / merge_posteriors / merge_inference_data: chunks of tasks inferred apart, joined into one result.

The reference is independent of the sharding code: ``infer`` called on each chunk by hand with the
chunk's seed, its draws concatenated on the task dim. Two gloo processes (torch.multiprocessing.spawn)
must give exactly the draws of one process.
"""

import os

import numpy as np
import pytest
import torch

import pyro_meta
from pyro_meta.arviz import merge_inference_data
from pyro_meta.data import LinearTasks
from pyro_meta.inference import chunk_seed, infer_sharded, merge_posteriors, task_chunks
from pyro_meta.models import BayesianLinear

from ..spawn import run_workers
from .test_globals import WithPyroSample, _batch

# short chains mix badly on purpose (the tests compare draws, not their quality)
pytestmark = pytest.mark.filterwarnings("ignore:NUTS. tasks")

NUTS = dict(method="nuts", num_samples=10, num_warmup=10, num_chains=1, init="prior", max_tree_depth=3)


def _model() -> BayesianLinear:
    torch.manual_seed(0)
    return BayesianLinear()


def _tasks(T: int = 5):
    return LinearTasks().sample(T, (3, 6), 4, generator=torch.Generator().manual_seed(9))


def _by_hand(model, batch, chunk_size, seed, **kw):
    """``infer`` on each chunk with its seed: the reference the sharded runs must reproduce."""
    return [
        pyro_meta.infer(model, batch.select(torch.arange(a, b)), seed=chunk_seed(seed, a), progress=False, **kw)
        for a, b in task_chunks(batch.num_tasks, chunk_size)
    ]


def test_task_chunks_and_chunk_seeds():
    assert task_chunks(5, 2) == [(0, 2), (2, 4), (4, 5)] and task_chunks(4, 4) == [(0, 4)]
    assert chunk_seed(0, 0) != chunk_seed(0, 2) != chunk_seed(1, 2)
    assert chunk_seed(3, 4) == chunk_seed(3, 4) and 0 <= chunk_seed(3, 4) < 2**32


def test_one_process_equals_infer_per_chunk():
    model, batch = _model(), _tasks()
    post = infer_sharded(model, batch, chunk_size=2, seed=4, progress=False, **NUTS)
    ref = _by_hand(model, batch, 2, 4, **NUTS)
    assert post.samples["w"].shape == (1, 10, 5, 4)
    assert torch.equal(post.samples["w"], torch.cat([p.samples["w"] for p in ref], 2))
    assert torch.equal(post.diagnostics["ess_bulk"], torch.cat([p.diagnostics["ess_bulk"] for p in ref]))
    assert post.diagnostics["chunks"] == [(0, 2), (2, 4), (4, 5)] and post.diagnostics["world_size"] == 1
    # per-draw statistics as of one run over every task: lp summed (independent chunks), divergences any
    assert torch.allclose(post.sample_stats["lp"], sum(p.sample_stats["lp"] for p in ref))
    assert torch.equal(post.sample_stats["diverging"], torch.stack([p.sample_stats["diverging"] for p in ref]).any(0))
    # the joined posterior predicts every task
    assert torch.equal(post.batch.context_x, batch.context_x)
    assert post.predict(num_samples=6).samples.shape[2:4] == (5, 4)


def test_merge_posteriors_weights_summaries_and_checks():
    model, batch = _model(), _tasks()
    parts = _by_hand(model, batch, 3, 0, method="importance", num_samples=20, num_proposals=50)
    merged = merge_posteriors(parts)
    assert torch.equal(merged.samples["w"], torch.cat([p.samples["w"] for p in parts], 2))
    assert torch.equal(merged.diagnostics["ess"], torch.cat([p.diagnostics["ess"] for p in parts]))
    assert merged.diagnostics["chunks"] == [(0, 3), (3, 5)]
    for name, value in merged.summary.items():  # task-weighted means / minima, as one run over the 5 tasks
        a, b = parts[0].summary[name], parts[1].summary[name]
        if isinstance(value, float) and not name.startswith(("min_", "max_")):
            assert value == pytest.approx((3 * a + 2 * b) / 5), name
    with pytest.raises(ValueError, match="empty"):
        merge_posteriors([])
    with pytest.raises(TypeError, match=r"posteriors\[1\]"):
        merge_posteriors([parts[0], "x"])
    amortized = pyro_meta.infer(model, batch.select([3, 4]), num_samples=20)
    with pytest.raises(ValueError, match=r"posteriors\[1\]"):
        merge_posteriors([parts[0], amortized])
    with pytest.raises(ValueError, match="draws"):
        merge_posteriors(
            [
                parts[0],
                pyro_meta.infer(model, batch.select([3, 4]), method="importance", num_samples=7, num_proposals=50),
            ]
        )
    with pytest.raises(ValueError, match="batch has 4 tasks"):
        merge_posteriors(parts, batch=batch.select([0, 1, 2, 3]))


@pytest.mark.slow
def test_per_shard_netcdf_merge_to_one_inference_data(tmp_path):
    model, batch = _model(), _tasks()
    post = infer_sharded(model, batch, chunk_size=2, seed=4, out_dir=tmp_path, progress=False, **NUTS)
    files = sorted(os.listdir(tmp_path))
    assert files == ["tasks_00000000-00000002.nc", "tasks_00000002-00000004.nc", "tasks_00000004-00000005.nc"]
    merged = merge_inference_data(tmp_path)
    direct = post.to_arviz()
    assert merged.posterior.sizes["task"] == 5
    np.testing.assert_array_equal(merged.posterior["w"].values, direct.posterior["w"].values)
    np.testing.assert_array_equal(merged.posterior["w"].values, post.samples["w"].numpy())
    for group in ("observed_data", "log_likelihood"):
        for name in direct[group].data_vars:
            np.testing.assert_allclose(merged[group][name].values, direct[group][name].values, err_msg=name)
    np.testing.assert_allclose(merged.sample_stats["lp"].values, post.sample_stats["lp"].numpy(), rtol=1e-6)
    # the file list and the objects give the same result
    again = merge_inference_data([az_part for az_part in (str(tmp_path / f) for f in files)])
    np.testing.assert_array_equal(again.posterior["w"].values, merged.posterior["w"].values)
    with pytest.raises(ValueError, match="not a folder"):
        merge_inference_data(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="empty"):
        merge_inference_data([])


def test_bad_arguments_and_global_latents_refused():
    model, batch = _model(), _tasks()
    with pytest.raises(ValueError, match="chunk_size"):
        infer_sharded(model, batch, chunk_size=0)
    with pytest.raises(TypeError, match="gather"):
        infer_sharded(model, batch, gather="yes")
    with pytest.raises(ValueError, match="globals='sample'"):
        infer_sharded(model, batch, method="nuts", globals="sample")
    with pytest.raises(ValueError, match="global latent sites"):
        infer_sharded(WithPyroSample(), _batch())
    assert infer_sharded(model, batch, gather=False) is None


# ------------------------------------------------------------------------------------ two processes
def sharded_worker(rank: int, world_size: int, out: str) -> None:
    post = infer_sharded(
        _model(), _tasks(4), chunk_size=2, seed=4, out_dir=os.path.join(out, "shards"), progress=False, **NUTS
    )
    assert (post is None) == (rank != 0)
    if rank == 0:
        torch.save(
            {
                "w": post.samples["w"],
                "world_size": post.diagnostics["world_size"],
                "ess_bulk": post.diagnostics["ess_bulk"],
            },
            os.path.join(out, "gathered.pt"),
        )


@pytest.mark.slow
def test_two_processes_give_the_draws_of_one(tmp_path):
    run_workers(sharded_worker, 2, str(tmp_path))
    got = torch.load(tmp_path / "gathered.pt")
    ref = _by_hand(_model(), _tasks(4), 2, 4, **NUTS)
    assert got["world_size"] == 2
    assert torch.equal(got["w"], torch.cat([p.samples["w"] for p in ref], 2))
    assert torch.equal(got["ess_bulk"], torch.cat([p.diagnostics["ess_bulk"] for p in ref]))
    merged = merge_inference_data(tmp_path / "shards")
    np.testing.assert_array_equal(merged.posterior["w"].values, got["w"].numpy())
