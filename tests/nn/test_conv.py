"""FunctionalConv4 against a per-task loop of torch.nn Conv2d/BatchNorm2d/MaxPool2d modules with the same weights."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_meta.nn import FunctionalConv4, inner_loop
from pyro_meta.testing import assert_close

NORMS = ("batch", "instance", "none")


def _reference(net: FunctionalConv4, phi: torch.Tensor):
    """One task's network as torch.nn modules (conv -> norm -> ReLU -> pool, the textbook order) with ``phi [P]``.

    Returns the module and ``{net name: (module param name, transposed)}`` for torch.func.functional_call.
    """
    layers, names = [], {}
    c_in = net.image_shape[0]
    for i, c_out in enumerate(net.channels, start=1):
        names[f"conv{i}.weight"] = (f"{len(layers)}.weight", False)
        names[f"conv{i}.bias"] = (f"{len(layers)}.bias", False)
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        if net.norm != "none":
            names[f"norm{i}.weight"] = (f"{len(layers)}.weight", False)
            names[f"norm{i}.bias"] = (f"{len(layers)}.bias", False)
            norm = (
                nn.BatchNorm2d(c_out, track_running_stats=False)
                if net.norm == "batch"
                else nn.InstanceNorm2d(c_out, affine=True)
            )
            layers.append(norm)
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c_out
    layers.append(nn.Flatten())
    if net.num_classes is not None:
        names["head.weight"] = (f"{len(layers)}.weight", True)
        names["head.bias"] = (f"{len(layers)}.bias", False)
        layers.append(nn.Linear(net.feature_dim, net.num_classes))
    module = nn.Sequential(*layers)
    state = {names[k][0]: (v.T if names[k][1] else v) for k, v in net.unflatten(phi).items()}
    module.load_state_dict(state)
    return module, names


def _run_reference(net, x, phi):
    """``x [N, C*H*W]`` (one task) through the reference with ``phi [P]``: ``[N, K]`` (or features ``[N, F]``)."""
    module, _ = _reference(net, phi)
    return module(x.reshape((-1,) + net.image_shape))


@pytest.mark.parametrize("norm", NORMS)
def test_forward_matches_per_task_torch_modules(norm, generator):
    net = FunctionalConv4((2, 18, 21), channels=(4, 5, 6, 3), num_classes=4, norm=norm)
    assert net.feature_dim == 3  # 18 -> 9 -> 4 -> 2 -> 1, 21 -> 10 -> 5 -> 2 -> 1
    T, N = 3, 5
    x = torch.randn(T, N, net.in_features, generator=generator)
    phi = net.init_params(T, generator=generator)
    phi = phi + 0.3 * torch.randn(phi.shape, generator=generator)  # norm scales and shifts away from 1 and 0
    out = net(x, phi)
    feats = net.features(x, phi)
    assert out.shape == (T, N, 4) and feats.shape == (T, N, 3)
    for t in range(T):
        assert_close(out[t], _run_reference(net, x[t], phi[t]), atol=1e-5, what=f"logits, task {t}")
        backbone = FunctionalConv4((2, 18, 21), channels=(4, 5, 6, 3), norm=norm)
        assert_close(feats[t], _run_reference(backbone, x[t], net.split(phi[t])[0]), atol=1e-5, what=f"features {t}")
    # the head alone, the backbone slice of phi and the task-latent form [T, 1, P] give the same numbers
    phi_f, phi_h = net.split(phi)
    assert_close(net.head(feats, phi_h), out, atol=1e-6, what="head(features)")
    assert_close(net.features(x, phi_f), feats, atol=0, what="features from the backbone slice")
    assert_close(net(x, phi[:, None, :]), out, atol=0, what="[T, 1, P] form")


def test_features_keep_torch_flatten_order_when_maps_are_larger_than_1x1(generator):
    net = FunctionalConv4((1, 35, 48), channels=(3, 3, 3, 4), num_classes=2, norm="instance")
    assert net.feature_dim == 4 * 2 * 3  # 35 -> 17 -> 8 -> 4 -> 2, 48 -> 24 -> 12 -> 6 -> 3
    x = torch.randn(2, 3, net.in_features, generator=generator)
    phi = net.init_params(2, generator=generator)
    out = net(x, phi)
    for t in range(2):
        assert_close(out[t], _run_reference(net, x[t], phi[t]), atol=1e-5, what=f"task {t}")


def test_omniglot_default_shapes_and_param_count(generator):
    net = FunctionalConv4((1, 28, 28), num_classes=5)
    ref, _ = _reference(net, net.init_params(generator=generator))
    assert net.feature_dim == 64
    assert net.num_params == sum(p.numel() for p in ref.parameters())
    assert net.num_feature_params + net.num_head_params == net.num_params and net.num_head_params == 64 * 5 + 5
    assert list(net.parameters()) == []


def test_draw_and_particle_dims_broadcast(generator):
    net = FunctionalConv4((1, 16, 16), channels=3, num_classes=2)
    S, T, N = 2, 3, 4
    x = torch.randn(T, N, 256, generator=generator)
    phi = net.init_params(S * T, generator=generator).reshape(S, T, 1, -1)  # draws of a task latent
    out = net(x, phi)
    assert out.shape == (S, T, N, 2)
    for s in range(S):
        for t in range(T):
            assert_close(out[s, t], _run_reference(net, x[t], phi[s, t, 0]), atol=1e-5, what=f"draw {s} task {t}")
    # particles [T, M, P] on x [T, 1, N, D] -> [T, M, N, K]
    out_p = net(x[:, None], phi[:, :, 0].transpose(0, 1))
    assert_close(out_p, out.transpose(0, 1), atol=1e-6, what="particle layout")
    # draws of the head only on a shared backbone [P_f]: features once, head per draw
    phi_f = net.split(phi[0, 0, 0])[0]
    heads = net.split(phi)[1]  # [S, T, 1, P_h]
    feats = net.features(x, phi_f)
    assert feats.shape == (T, N, 1 * 3)
    both = torch.cat([phi_f.expand(S, T, 1, -1), heads], -1)
    assert_close(net.head(feats, heads), net(x, both), atol=1e-6, what="shared backbone, head draws")


def test_batch_norm_statistics_ignore_padded_images_and_other_tasks(generator):
    net = FunctionalConv4((1, 16, 16), channels=3, num_classes=2, norm="batch")
    T, N = 3, 6
    x = torch.randn(T, N, 256, generator=generator)
    phi = net.init_params(T, generator=generator)
    mask = torch.ones(T, N, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    out = net(x, phi, mask)
    for t in range(T):
        real = mask[t]
        assert_close(out[t][real], _run_reference(net, x[t][real], phi[t]), atol=1e-5, what=f"task {t}")
    # padded images and other tasks' images do not move a task's outputs
    x2 = x.clone()
    x2[0, 4:] = 7.0
    x2[1] = torch.randn(N, 256, generator=generator)
    out2 = net(x2, phi, mask)
    assert_close(out2[0][mask[0]], out[0][mask[0]], atol=1e-6, what="padding changed")
    assert_close(out2[2], out[2], atol=0, what="another task changed")
    # an all-True mask equals no mask (task 1 above, every image real, checked the masked statistics)
    assert_close(net(x, phi, torch.ones(T, N, dtype=torch.bool)), net(x, phi), atol=1e-5, what="all-True mask")


def test_init_params_is_seeded_and_bounded():
    net = FunctionalConv4((1, 28, 28), channels=8, num_classes=5)
    a = net.init_params(generator=torch.Generator().manual_seed(1))
    b = net.init_params(generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (net.num_params,)
    p = net.unflatten(a)
    w1, w2 = p["conv1.weight"], p["conv2.weight"]
    assert 0.8 / 3 < float(w1.abs().max()) <= 1 / 3  # U(-1/sqrt(1*9), 1/sqrt(1*9))
    assert 0.8 / math.sqrt(72) < float(w2.abs().max()) <= 1 / math.sqrt(72)
    assert torch.equal(p["norm1.weight"], torch.ones(8)) and torch.equal(p["norm1.bias"], torch.zeros(8))
    assert float(p["head.weight"].abs().max()) <= 1 / math.sqrt(8)
    assert net.init_params(4, generator=torch.Generator().manual_seed(1)).shape == (4, net.num_params)


def test_unflatten_flatten_round_trip(generator):
    net = FunctionalConv4((1, 16, 16), channels=3, num_classes=2)
    phi = net.init_params(5, generator=generator)
    params = net.unflatten(phi)
    assert tuple(params["conv2.weight"].shape) == (5, 3, 3, 3, 3) and tuple(params["head.weight"].shape) == (5, 3, 2)
    assert torch.equal(net.flatten(params), phi)
    backbone = {k: v for k, v in params.items() if not k.startswith("head.")}
    assert torch.equal(net.flatten(backbone), net.split(phi)[0])
    assert list(net.unflatten(net.split(phi)[0])) == list(backbone)


def test_maml_meta_gradient_through_inner_loop_matches_torch_func(generator):
    """Second-order MAML gradient of a batch-norm Conv-4 classifier equals a per-task torch.func reference."""
    from torch.func import functional_call, grad

    net = FunctionalConv4((1, 16, 16), channels=4, num_classes=3, norm="batch")
    T, Nc, Nt, lr = 2, 3, 4, 0.4
    xc, xt = torch.randn(T, Nc, 256, generator=generator), torch.randn(T, Nt, 256, generator=generator)
    yc, yt = torch.randint(3, (T, Nc), generator=generator), torch.randint(3, (T, Nt), generator=generator)
    theta = net.init_params(generator=generator).requires_grad_(True)

    def ce(logits, y):  # per-task mean cross-entropy [..., T]
        return F.cross_entropy(logits.transpose(-1, -2), y, reduction="none").mean(-1)

    phi = inner_loop(lambda p: ce(net(xc, p), yc), theta.expand(T, -1), 1, lr)
    (g,) = torch.autograd.grad(ce(net(xt, phi), yt).sum(), theta)

    ref, names = _reference(net, theta.detach())

    def to_dict(flat):
        return {names[k][0]: (v.T if names[k][1] else v) for k, v in net.unflatten(flat).items()}

    def task_meta(flat, t):
        def lc(params):
            return F.cross_entropy(functional_call(ref, params, (xc[t].reshape(Nc, 1, 16, 16),)), yc[t])

        params = to_dict(flat)
        gp = grad(lc)(params)
        params = {k: params[k] - lr * gp[k] for k in params}
        return F.cross_entropy(functional_call(ref, params, (xt[t].reshape(Nt, 1, 16, 16),)), yt[t])

    expected = sum(grad(task_meta)(theta.detach(), t) for t in range(T))
    assert float(expected.abs().max()) > 1e-3
    assert_close(g, expected, atol=1e-5, rtol=1e-4, what="meta-gradient")


def test_empty_sets_and_shared_weights(generator):
    net = FunctionalConv4((1, 16, 16), channels=3, num_classes=2)
    phi = net.init_params(generator=generator)
    x = torch.randn(2, 4, 256, generator=generator)
    assert_close(net(x, phi), net(x, phi.expand(2, -1)), atol=0, what="shared [P] weights")
    assert net(torch.zeros(2, 0, 256), phi.expand(2, -1)).shape == (2, 0, 2)
    assert net.features(torch.zeros(2, 0, 256), phi.expand(2, -1)).shape == (2, 0, 3)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="image_shape"):
        FunctionalConv4((28, 28))
    with pytest.raises(ValueError, match="image_shape: H and W must be at least 16"):
        FunctionalConv4((1, 8, 28))
    with pytest.raises(ValueError, match="channels"):
        FunctionalConv4((1, 28, 28), channels=(64, 64))
    with pytest.raises(ValueError, match="norm"):
        FunctionalConv4((1, 28, 28), norm="layer")
    with pytest.raises(ValueError, match="num_classes"):
        FunctionalConv4((1, 28, 28), num_classes=0)
    net = FunctionalConv4((1, 16, 16), channels=2, num_classes=2)
    phi = net.init_params(2)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., T, N, 256\]"):
        net(torch.zeros(2, 3, 255), phi)
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        net(torch.zeros(2, 3, 256, dtype=torch.long), phi)
    with pytest.raises(ValueError, match="x has NaN"):
        net(torch.full((2, 3, 256), float("nan")), phi)
    with pytest.raises(ValueError, match=rf"phi must have shape \[\.\.\., T, {net.num_params}\]"):
        net(torch.zeros(2, 3, 256), phi[:, :-1])
    with pytest.raises(TypeError, match="phi must be a floating tensor"):
        net(torch.zeros(2, 3, 256), phi.long())
    with pytest.raises(TypeError, match="phi and x must have the same dtype"):
        net(torch.zeros(2, 3, 256), phi.double())
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        net(torch.zeros(2, 3, 256), phi, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mask must have shape \[\.\.\., T, N\]"):
        net(torch.zeros(2, 3, 256), phi, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="params must have the keys"):
        net.flatten({"conv1.weight": torch.zeros(2, 1, 3, 3)})
    with pytest.raises(ValueError, match="no head"):
        FunctionalConv4((1, 16, 16)).head(torch.zeros(2, 3, 64), torch.zeros(2, 130))
