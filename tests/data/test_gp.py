"""GPCurves: kernels against hand-computed values, the NP protocol, joint draws with the right covariance."""

import math

import pytest
import torch

from pyro_meta.data import BNPGPCurves, GPCurves, TaskBatch
from pyro_meta.data.gp import kernel_matrix


def _k(kernel, r, ell, s, p=None):
    """Hand-written kernels (math module) at distance r."""
    if kernel == "rbf":
        return s**2 * math.exp(-(r**2) / (2 * ell**2))
    if kernel == "matern52":
        u = math.sqrt(5) * r / ell
        return s**2 * (1 + u + u**2 / 3) * math.exp(-u)
    return s**2 * math.exp(-2 * math.sin(math.pi * r / p) ** 2 / ell**2)


@pytest.mark.parametrize("kernel", ["rbf", "matern52", "periodic"])
def test_kernel_matrix_matches_hand_formulas(kernel):
    x1 = torch.tensor([[[0.0], [0.3], [-1.1]]], dtype=torch.float64)
    x2 = torch.tensor([[[0.0], [1.7]]], dtype=torch.float64)
    ell, s, p = 0.45, 0.8, 1.3
    hyper = [torch.tensor([v], dtype=torch.float64) for v in (ell, s, p)]
    K = kernel_matrix(kernel, x1, x2, *hyper)
    assert K.shape == (1, 3, 2)
    for i, a in enumerate([0.0, 0.3, -1.1]):
        for j, b in enumerate([0.0, 1.7]):
            assert float(K[0, i, j]) == pytest.approx(_k(kernel, abs(a - b), ell, s, p), rel=1e-12, abs=1e-15)


def test_periodic_kernel_repeats_with_the_period():
    x = torch.tensor([[[0.0], [1.3], [2.6]]], dtype=torch.float64)
    K = kernel_matrix("periodic", x, x, torch.tensor([0.7]), torch.tensor([0.5]), torch.tensor([1.3]))
    assert torch.allclose(K, torch.full_like(K, 0.25), atol=1e-12)


def test_np_protocol_defaults(generator):
    tasks = GPCurves()
    assert tasks.noise_std == 0.02 and tasks.kernel == "rbf" and tasks.targets_include_context
    b = tasks.sample(200, generator=generator)
    assert isinstance(b, TaskBatch)
    info = b.info
    assert info["kernel"] == "rbf"
    assert float(info["lengthscale"].min()) >= 0.1 and float(info["lengthscale"].max()) <= 0.6
    assert float(info["signal_scale"].min()) >= 0.1 and float(info["signal_scale"].max()) <= 1.0
    assert bool((info["period"] == 0).all()) and bool((info["noise_std"] == 0.02).all())
    nc = b.context_mask.sum(-1)
    assert int(nc.min()) >= 3 and int(nc.max()) <= 49 and len(set(nc.tolist())) > 10
    assert float(b.context_x.abs().max()) <= 2.0
    # targets include the context: the first Nc target slots are the context points
    Nc = b.context_x.shape[1]
    assert torch.equal(b.target_x[:, :Nc], b.context_x) and torch.equal(b.target_y[:, :Nc], b.context_y)
    assert torch.equal(b.target_mask[:, :Nc], b.context_mask)
    extra = b.target_mask[:, Nc:].sum(-1)
    assert int(extra.min()) >= 2 and int(extra.max()) <= 49


def test_periodic_has_a_period_in_range(generator):
    b = GPCurves("periodic").sample(100, 5, 5, generator=generator)
    p = b.info["period"]
    assert float(p.min()) >= 1.0 and float(p.max()) <= 2.0
    assert float(b.info["lengthscale"].min()) >= 0.5 and float(b.info["lengthscale"].max()) <= 1.0


@pytest.mark.parametrize("kernel", ["rbf", "matern52", "periodic"])
def test_joint_draws_have_the_kernel_covariance(kernel, generator):
    # many tasks with the same hyperparameters at the same inputs: empirical covariance vs hand kernel
    tasks = GPCurves(kernel, noise_std=0.1)
    T, xs = 20000, [-0.5, 0.0, 0.4]
    ell, s, p = 0.5, 0.9, 1.5
    x = torch.tensor(xs).reshape(1, 3, 1).expand(T, 3, 1)
    params = {
        "lengthscale": torch.full((T,), ell),
        "signal_scale": torch.full((T,), s),
        "period": torch.full((T,), p),
        "noise_std": torch.full((T,), 0.1),
    }
    y = tasks.sample_y(x, params, generator)[..., 0].double()
    emp = y.T @ y / T  # zero mean
    for i in range(3):
        for j in range(3):
            expected = _k(kernel, abs(xs[i] - xs[j]), ell, s, p) + (0.01 if i == j else 0.0)
            # std of an empirical covariance ~ s^2 sqrt(2 / T) = 0.008; 5 sigma
            assert float(emp[i, j]) == pytest.approx(expected, abs=0.04)


def test_draws_are_joint_over_context_and_target(generator):
    # a long length scale makes neighbouring context and target values nearly equal
    tasks = GPCurves(lengthscale_range=(50.0, 50.0), signal_scale_range=(1.0, 1.0), noise_std=0.01)
    b = tasks.sample(50, 4, 4, generator=generator)
    Nc = b.context_x.shape[1]
    spread = b.target_y[:, Nc:].amax(1) - b.target_y[:, Nc:].amin(1)
    assert float(spread.max()) < 0.5
    assert float((b.target_y[:, Nc:].mean(1) - b.context_y.mean(1)).abs().max()) < 0.5
    assert float(b.context_y.std()) > 0.5  # while tasks differ


def test_seeded_reproducible():
    a = GPCurves().sample(3, 4, 4, generator=torch.Generator().manual_seed(1))
    b = GPCurves().sample(3, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.target_y, b.target_y)


def test_noise_free_draws_with_many_points_work(generator):
    # jitter keeps the Cholesky factorisation alive when noise_std = 0 and the kernel is smooth
    b = GPCurves(noise_std=0.0, lengthscale_range=(0.6, 0.6)).sample(4, 49, 49, generator=generator)
    assert bool(torch.isfinite(b.target_y).all())


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"kernel": "cosine"}, ValueError, "kernel"),
        ({"noise_std": -1.0}, ValueError, "noise_std"),
        ({"lengthscale_range": (0.0, 1.0)}, ValueError, "lengthscale_range"),
        ({"signal_scale_range": 1.0}, TypeError, "signal_scale_range"),
        ({"x_range": (2.0, -2.0)}, ValueError, "x_range"),
    ],
)
def test_bad_arguments_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GPCurves(**kwargs)


def test_kernel_matrix_bad_shapes_raise():
    x = torch.zeros(2, 3, 1)
    with pytest.raises(ValueError, match="lengthscale"):
        kernel_matrix("rbf", x, x, torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="x1, x2"):
        kernel_matrix("rbf", x, torch.zeros(2, 3, 2), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="period"):
        kernel_matrix("periodic", x, x, torch.ones(2), torch.ones(2))


# ----------------------------------------------------------------------------- the BNP / TNP protocol
def test_bnp_protocol_sizes_follow_the_papers_sampler(generator):
    """Nc ~ U{3..46} and, given Nc, Nt ~ U{3..49 - Nc} (their randint(3, 47), randint(3, 50 - Nc))."""

    class SizesOnly(BNPGPCurves):  # the size protocol without the (slow, here irrelevant) GP draws
        def sample_y(self, x, params, generator):
            return torch.zeros(x.shape[:-1] + (1,))

    batch = SizesOnly("rbf", shared_sizes=False).sample(20000, generator=generator)
    nc, nt = batch.context_mask.sum(1), batch.target_mask.sum(1)
    assert int(nc.min()) == 3 and int(nc.max()) == 46
    assert bool((nt >= 3).all()) and bool((nc + nt <= 49).all())
    counts = torch.bincount(nc, minlength=47)[3:].double()  # 44 values, 20000 draws: about 455 each
    assert float(((counts - counts.mean()) ** 2 / counts.mean()).sum()) < 100  # chi^2(43): 99.9% quantile 77
    for k in (3, 20, 40):  # Nt given Nc is uniform on 3..49-k: its mean is (52 - k) / 2
        sel = nt[nc == k].double()
        assert abs(float(sel.mean()) - (52 - k) / 2) < 5 * float(sel.std().clamp_min(0.3)) / len(sel) ** 0.5
        assert int(sel.max()) == 49 - k and int(sel.min()) == 3
    assert batch.target_x.shape[1] == int(nt.max()) and batch.info["kernel"] == "rbf"


def test_bnp_protocol_hyperparameters_and_disjoint_targets(generator):
    tasks = BNPGPCurves("periodic")
    assert (tasks.lengthscale_range, tasks.period_range, tasks.signal_scale_range) == (
        (0.1, 0.6),
        (0.1, 0.5),
        (0.1, 1.0),
    )
    assert tasks.noise_std == 0.02 and tasks.x_range == (-2.0, 2.0) and not tasks.targets_include_context
    batch = tasks.sample(500, generator=generator)
    assert bool(batch.context_mask.all())
    for key, (lo, hi) in (("period", (0.1, 0.5)), ("lengthscale", (0.1, 0.6)), ("signal_scale", (0.1, 1.0))):
        v = batch.info[key]
        assert float(v.min()) >= lo and float(v.max()) <= hi and float(v.max() - v.min()) > 0.8 * (hi - lo), key
    # targets are fresh points, not copies of the context
    same = (batch.target_x[:, :, None, 0] == batch.context_x[:, None, :, 0]).any(-1) & batch.target_mask
    assert not bool(same.any())
    assert BNPGPCurves("matern52").lengthscale_range == (0.1, 0.6)


def test_bnp_protocol_given_sizes_and_seeds():
    tasks = BNPGPCurves("rbf")
    a = tasks.sample(5, num_context=10, generator=torch.Generator().manual_seed(3))
    b = tasks.sample(5, num_context=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.target_y, b.target_y)
    assert bool((a.context_mask.sum(1) == 10).all()) and bool((a.target_mask.sum(1) <= 39).all())
    c = tasks.sample(4, num_context=(3, 5), num_target=7, generator=torch.Generator().manual_seed(0))
    assert bool((c.target_mask.sum(1) == 7).all())
    # the papers' batches: one (Nc, Nt) per call, no padding
    for seed in range(5):
        d = tasks.sample(16, generator=torch.Generator().manual_seed(seed))
        assert bool(d.context_mask.all()) and bool(d.target_mask.all())
        assert 3 <= d.context_x.shape[1] <= 46 and 3 <= d.target_x.shape[1] <= 49 - d.context_x.shape[1]
    with pytest.raises(ValueError, match="max_num_points"):
        BNPGPCurves(max_num_points=6)
    with pytest.raises(ValueError, match="num_tasks"):
        tasks.sample(0)
