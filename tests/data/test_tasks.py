"""Task distributions: the MAML sinusoid protocol, LinearTasks, ragged sizes, seeding."""

import math

import pytest
import torch

from pyro_meta.data import LinearTasks, Sinusoid, TaskBatch


def test_sinusoid_protocol_ranges_and_function(generator):
    b = Sinusoid().sample(200, 10, 10, generator=generator)
    A, ph = b.info["amplitude"], b.info["phase"]
    assert float(A.min()) >= 0.1 and float(A.max()) <= 5.0
    assert float(ph.min()) >= 0.0 and float(ph.max()) <= math.pi
    assert float(b.context_x.min()) >= -5 and float(b.context_x.max()) <= 5
    expected = A[:, None, None] * torch.sin(b.target_x - ph[:, None, None])
    assert torch.allclose(b.target_y, expected, atol=1e-5)  # noise-free by default


def test_sinusoid_noise_level(generator):
    b = Sinusoid(noise_std=0.5).sample(400, 20, 1, generator=generator)
    f = b.info["amplitude"][:, None, None] * torch.sin(b.context_x - b.info["phase"][:, None, None])
    assert abs(float((b.context_y - f).std()) - 0.5) < 0.02


def test_ragged_sizes_are_masked(generator):
    b = Sinusoid().sample(50, (1, 6), (2, 3), generator=generator)
    n = b.context_mask.sum(-1)
    assert int(n.min()) >= 1 and int(n.max()) <= 6 and len(set(n.tolist())) > 1
    assert torch.equal(n, b.info["num_context"])
    # masks are prefixes: real points first, padding after
    assert bool((b.context_mask.int().diff(dim=-1) <= 0).all())


def test_same_generator_seed_same_tasks():
    a = Sinusoid().sample(4, 3, 3, generator=torch.Generator().manual_seed(5))
    b = Sinusoid().sample(4, 3, 3, generator=torch.Generator().manual_seed(5))
    c = Sinusoid().sample(4, 3, 3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.context_y, b.context_y) and not torch.equal(a.context_y, c.context_y)


@pytest.mark.parametrize("bad", [0, -1, (3, 2), (1, 2, 3), "5", 2.5])
def test_bad_sizes(bad):
    with pytest.raises((ValueError, TypeError), match="num_context|num_tasks"):
        Sinusoid().sample(2, bad, 3)


def test_linear_tasks_moments(generator):
    tasks = LinearTasks()
    b = tasks.sample(4000, 3, 1, generator=generator)
    w = b.info["weights"]
    assert torch.allclose(w.mean(0), tasks.weight_mean, atol=0.05)
    assert torch.allclose(w.std(0), tasks.weight_scale, atol=0.05)
    resid = b.context_y - tasks.features(b.context_x) @ w[:, :, None]
    assert abs(float(resid.std()) - tasks.noise_std) < 0.01


def test_user_defined_distribution_is_just_an_object_with_sample():
    class Constant:
        def sample(self, num_tasks, num_context, num_target, generator=None):
            x = torch.zeros(num_tasks, num_context, 1)
            return TaskBatch(x, x + 1, torch.zeros(num_tasks, num_target, 1), torch.ones(num_tasks, num_target, 1))

    assert Constant().sample(2, 3, 4).num_tasks == 2
