"""The memory budget: its setting, the allocation counter and the chunk planner."""

import pyro
import pytest
import torch

import pyro_meta
from pyro_meta.memory import DEFAULT_MEMORY_BUDGET, ChunkPlan, measure_allocations, plan_chunks


def test_budget_setting_scopes_and_checks():
    assert pyro_meta.get_memory_budget() == DEFAULT_MEMORY_BUDGET == 256 * 2**20
    try:
        pyro_meta.set_memory_budget(10**6)
        assert pyro_meta.get_memory_budget() == 10**6
        with pyro_meta.memory_budget(1234):
            assert pyro_meta.get_memory_budget() == 1234
        assert pyro_meta.get_memory_budget() == 10**6
    finally:
        pyro_meta.set_memory_budget(None)
    assert pyro_meta.get_memory_budget() == DEFAULT_MEMORY_BUDGET
    for bad, exc in ((0, ValueError), (-5, ValueError), (True, ValueError), (1.5, ValueError), ("1GB", TypeError)):
        with pytest.raises(exc, match="nbytes"):
            pyro_meta.set_memory_budget(bad)
        with pytest.raises(exc, match="nbytes"):
            with pyro_meta.memory_budget(bad):
                pass


def test_allocations_count_new_storages_not_views():
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(100, 64)
    with torch.no_grad():
        (y, n) = measure_allocations(lambda: lin(x).relu())
    assert n == 2 * 100 * 32 * 4  # the linear's output and relu's; weights are inputs
    _, n = measure_allocations(lambda: (x.expand(3, 100, 64), x[:10], x.t(), x.reshape(-1)))
    assert n == 0
    _, n = measure_allocations(lambda: x.clone().mul_(2))
    assert n == 100 * 64 * 4


def _run_costing(per_task: int, per_draw_task: int, calls: list, rng: bool = False):
    """A computation that allocates exactly ``t * (per_task + n * per_draw_task)`` bytes (and draws RNG if asked)."""

    def run(n, t):
        calls.append((n, t))
        torch.empty(t * per_task // 4, dtype=torch.float32).fill_(0)
        torch.empty(n * t * per_draw_task // 4, dtype=torch.float32).fill_(0)
        if rng:
            torch.randn(3)

    return run


def test_plan_extrapolates_the_measured_cost_and_fits_the_budget():
    calls = []
    run = _run_costing(4000, 400, calls)
    plan = plan_chunks(run, num_draws=500, num_tasks=1000, budget=10**6)
    assert calls == [(1, 4), (2, 4)]  # two probes on 4 tasks
    # cost(n, t) = t * (4000 + 400 n): all 500 draws of 4 tasks = 816,000 <= 1e6 < 5 tasks
    assert (plan.draws, plan.tasks) == (500, 4) and plan.cost == 4 * (4000 + 400 * 500)
    assert len(plan.task_slices()) == 250 and plan.draw_slices() == [slice(0, 500)]
    # one task's draws do not fit: draws are split
    plan = plan_chunks(run, 500, 1000, budget=50_000)
    assert plan.tasks == 1 and plan.draws == (50_000 - 4000) // 400 and plan.cost <= 50_000
    # tasks may not be split: all tasks, fewer draws
    plan = plan_chunks(run, 500, 10, budget=500_000, split_tasks=False)
    assert plan.tasks == 10 and plan.draws == (500_000 - 10 * 4000) // (10 * 400)
    # everything fits: one chunk
    assert plan_chunks(run, 5, 3, budget=10**9).single


def test_probes_leave_the_rng_as_it_was_and_are_cached():
    calls = []
    run = _run_costing(100, 10, calls, rng=True)
    owner = torch.nn.Linear(1, 1)
    pyro.set_rng_seed(7)
    plan_chunks(run, 50, 50, key=(owner, "shape-a"), budget=10**4)
    after = torch.rand(3)
    pyro.set_rng_seed(7)
    assert torch.equal(torch.rand(3), after)
    plan_chunks(run, 80, 90, key=(owner, "shape-a"), budget=10**4)
    assert len(calls) == 2  # the second plan reused the cached cost
    plan_chunks(run, 80, 90, key=(owner, "shape-b"), budget=10**4)
    assert len(calls) == 4


def test_a_failing_probe_gives_one_chunk():
    def run(n, t):
        raise RuntimeError("model bug")

    plan = plan_chunks(run, 100, 100, budget=10)
    assert isinstance(plan, ChunkPlan) and plan.single
