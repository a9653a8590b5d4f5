"""LineOrSine: the PLATIPUS protocol ranges, the mixture of families, noise, info and errors."""

import math

import pytest
import torch

from pyro_meta.data import LineOrSine, TaskBatch


def test_protocol_ranges_and_function(generator):
    b = LineOrSine(noise_std=0.0).sample(400, 5, 10, generator=generator)
    info = b.info
    s = info["is_sine"]
    assert s.dtype == torch.bool and s.shape == (400,)
    A, ph, m, c = info["amplitude"], info["phase"], info["slope"], info["intercept"]
    assert float(A[s].min()) >= 0.1 and float(A[s].max()) <= 5.0
    assert float(ph[s].min()) >= 0.0 and float(ph[s].max()) <= math.pi
    assert float(m[~s].abs().max()) <= 3.0 and float(c[~s].abs().max()) <= 3.0
    # unused parameters are exactly 0
    assert float(A[~s].abs().max()) == 0 and float(ph[~s].abs().max()) == 0
    assert float(m[s].abs().max()) == 0 and float(c[s].abs().max()) == 0
    assert float(b.target_x.min()) >= -5 and float(b.target_x.max()) <= 5
    # hand-written functions, task by task
    for t in [int(torch.nonzero(s)[0]), int(torch.nonzero(~s)[0])]:
        x = b.target_x[t, :, 0]
        f = A[t] * torch.sin(x - ph[t]) if s[t] else m[t] * x + c[t]
        assert torch.allclose(b.target_y[t, :, 0], f, atol=1e-5)


def test_family_probability_is_one_half(generator):
    s = LineOrSine().sample(4000, 1, 1, generator=generator).info["is_sine"].float()
    # binomial std of the mean: sqrt(0.25 / 4000) = 0.0079; 4 sigma
    assert abs(float(s.mean()) - 0.5) < 0.032


def test_sine_prob_extremes(generator):
    assert bool(LineOrSine(sine_prob=1.0).sample(50, 1, 1, generator=generator).info["is_sine"].all())
    assert not bool(LineOrSine(sine_prob=0.0).sample(50, 1, 1, generator=generator).info["is_sine"].any())


def test_default_noise_is_0_1(generator):
    tasks = LineOrSine()
    assert tasks.noise_std == 0.1
    b = tasks.sample(300, 20, 1, generator=generator)
    resid = b.context_y - tasks.function(b.context_x, b.info)
    # std of a sample std of n=6000 normals: 0.1 / sqrt(2 n) ~ 0.0009
    assert abs(float(resid.std()) - 0.1) < 0.005


def test_is_a_task_batch_with_ragged_sets_and_select(generator):
    b = LineOrSine().sample(6, (1, 3), (2, 4), generator=generator)
    assert isinstance(b, TaskBatch)
    assert 2 <= b.target_x.shape[1] <= 4 and 1 <= b.context_x.shape[1] <= 3
    sub = b.select([1, 3])
    assert torch.equal(sub.info["is_sine"], b.info["is_sine"][[1, 3]])


def test_seeded_reproducible():
    a = LineOrSine().sample(5, 2, 2, generator=torch.Generator().manual_seed(3))
    b = LineOrSine().sample(5, 2, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.target_y, b.target_y) and torch.equal(a.info["is_sine"], b.info["is_sine"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise_std": -0.1}, "noise_std"),
        ({"sine_prob": 1.5}, "sine_prob"),
        ({"amplitude_range": (-1.0, 2.0)}, "amplitude_range"),
        ({"slope_range": (3.0, -3.0)}, "slope_range"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LineOrSine(**kwargs)


def test_bad_range_type_raises():
    with pytest.raises(TypeError, match="x_range"):
        LineOrSine(x_range=5.0)
