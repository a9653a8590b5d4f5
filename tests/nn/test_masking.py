"""masked_mean against a per-task loop over the real points."""

import pytest
import torch

from pyro_meta.nn import masked_mean
from pyro_meta.testing import assert_close


def test_masked_mean_matches_per_task_mean_of_real_points(generator):
    T, N, H = 4, 6, 3
    h = torch.randn(T, N, H, generator=generator)
    mask = torch.rand(T, N, generator=generator) < 0.6
    mask[0] = True
    mask[1] = False  # an empty set
    out = masked_mean(h, mask)
    assert out.shape == (T, H)
    for t in range(T):
        expected = h[t][mask[t]].mean(0) if mask[t].any() else torch.zeros(H)
        assert_close(out[t], expected, atol=1e-6, what=f"task {t}")
    # padding values do not matter
    assert torch.equal(masked_mean(torch.where(mask[..., None], h, 1e3), mask), out)


def test_masked_mean_broadcasts_draw_dims_and_accepts_no_mask(generator):
    S, T, N, H = 2, 3, 5, 4
    h = torch.randn(S, T, N, H, generator=generator)
    mask = torch.rand(T, N, generator=generator) < 0.5
    out = masked_mean(h, mask)
    assert out.shape == (S, T, H)
    for s in range(S):
        assert_close(out[s], masked_mean(h[s], mask), atol=0, what=f"draw {s}")
    assert_close(masked_mean(h, None), h.mean(-2), atol=1e-7, what="no mask")
    assert torch.equal(masked_mean(torch.zeros(T, 0, H), None), torch.zeros(T, H))


def test_masked_mean_bad_arguments_raise():
    h = torch.zeros(2, 3, 4)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor \[\.\.\., T, N\]"):
        masked_mean(h, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mask must have shape \[\.\.\., T, N\]"):
        masked_mean(h, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="h must be"):
        masked_mean(torch.zeros(3), None)
