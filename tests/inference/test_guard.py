"""The NaN guard's pieces: finding non-finite tensors, and putting back the last good training state."""

import math

import pytest
import torch

from pyro_meta.inference.guard import LastGood, first_nonfinite, optimizer_tensors


def test_first_nonfinite_names_the_first_bad_tensor():
    good = torch.ones(3)
    assert first_nonfinite([("a", good), ("b", None), ("c", torch.arange(3))]) is None  # ints and None skipped
    assert first_nonfinite([("a", good), ("b", torch.tensor([1.0, math.nan])), ("c", torch.tensor([math.inf]))]) == "b"
    assert first_nonfinite([("a", torch.tensor([-math.inf]))]) == "a"
    # finite values whose float32 sum overflows are not reported (the check falls back to elementwise)
    big = torch.full((4,), 3e38)
    assert not torch.isfinite(big.sum())
    assert first_nonfinite([("big", big)]) is None
    assert first_nonfinite([]) is None


def _adam_with_state(steps: int = 3):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.Adam([w], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    return w, opt


def test_restore_puts_back_parameters_and_optimizer_state():
    w, opt = _adam_with_state()
    ref_w, ref_opt = _adam_with_state()
    guard = LastGood(opt)
    guard.save()
    w.grad = torch.full_like(w, math.nan)  # a bad step: parameters and Adam's moments become NaN
    opt.step()
    assert first_nonfinite([("w", w)] + optimizer_tensors(opt, {id(w): "w"})) == "w"
    guard.restore()
    assert torch.equal(w, ref_w)
    for key, value in ref_opt.state[ref_w].items():
        assert torch.equal(opt.state[w][key], value), key
    # the next step is the one the untouched optimizer takes
    for p, o in ((w, opt), (ref_w, ref_opt)):
        o.zero_grad()
        (p**2).sum().backward()
        o.step()
    assert torch.equal(w, ref_w)


def test_restore_before_the_first_step_drops_the_new_optimizer_state():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1)
    guard = LastGood(opt)
    guard.save()
    (w * 1e25).sum().backward()  # a finite gradient whose square overflows: exp_avg_sq becomes inf
    opt.step()
    assert first_nonfinite(optimizer_tensors(opt, {id(w): "w"})) == "optimizer state 'exp_avg_sq' of w"
    guard.restore()
    assert torch.equal(w, torch.ones(3)) and len(opt.state) == 0


def test_optimizer_tensors_describes_each_slot():
    w, opt = _adam_with_state(1)
    names = [n for n, _ in optimizer_tensors(opt, {id(w): "w"})]
    assert "optimizer state 'exp_avg' of w" in names and "optimizer state 'exp_avg_sq' of w" in names


@pytest.mark.parametrize("steps", [0, 2])
def test_save_twice_reuses_buffers_and_keeps_the_latest(steps):
    w, opt = _adam_with_state(steps)
    guard = LastGood(opt)
    guard.save()
    for _ in range(2):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    guard.save()
    expected = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    guard.restore()
    assert torch.equal(w, expected)
