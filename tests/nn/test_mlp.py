"""FunctionalMLP against per-task nn.Linear references."""

import pytest
import torch
from torch import nn

from pyro_meta.nn import FunctionalMLP
from pyro_meta.testing import assert_close


def _reference(net: FunctionalMLP, x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """One task, one weight vector: x [N, Dx], flat [P] through nn.Linear layers (independent code path)."""
    layers, offset = [], 0
    for d_in, d_out in zip(net.sizes[:-1], net.sizes[1:]):
        lin = nn.Linear(d_in, d_out)
        with torch.no_grad():
            lin.weight.copy_(flat[offset : offset + d_in * d_out].reshape(d_in, d_out).T)
            offset += d_in * d_out
            lin.bias.copy_(flat[offset : offset + d_out])
            offset += d_out
        layers += [lin, nn.Tanh()]
    return nn.Sequential(*layers[:-1])(x)


def test_num_params_matches_torch_layers():
    net = FunctionalMLP((3, 40, 40, 2))
    ref = nn.Sequential(nn.Linear(3, 40), nn.Linear(40, 40), nn.Linear(40, 2))
    assert net.num_params == sum(p.numel() for p in ref.parameters()) == 3 * 40 + 40 + 40 * 40 + 40 + 40 * 2 + 2
    assert list(net.parameters()) == []


def test_forward_matches_per_task_reference(generator):
    net = FunctionalMLP((2, 7, 5, 3), activation="tanh")
    T, N = 4, 6
    x = torch.randn(T, N, 2, generator=generator)
    phi = net.init_params(T, generator=generator)
    out = net(x, phi)
    assert out.shape == (T, N, 3)
    for t in range(T):
        assert_close(out[t], _reference(net, x[t], phi[t]), atol=1e-5, what=f"task {t}")
    # the task-latent form [T, 1, P] gives the same numbers
    assert_close(net(x, phi[:, None, :]), out, atol=1e-6, what="[T, 1, P] form")


def test_forward_broadcasts_over_draws_and_particles(generator):
    net = FunctionalMLP((1, 6, 1), activation="tanh")
    S, T, N = 3, 2, 4
    x = torch.randn(T, N, 1, generator=generator)
    phi = net.init_params(S * T, generator=generator).reshape(S, T, 1, -1)
    out = net(x, phi)
    assert out.shape == (S, T, N, 1)
    for s in range(S):
        for t in range(T):
            assert_close(out[s, t], _reference(net, x[t], phi[s, t, 0]), atol=1e-5, what=f"draw {s} task {t}")
    # particles [T, M, P] evaluated on x [T, 1, N, Dx] -> [T, M, N, Dy]
    parts = phi[:, :, 0].transpose(0, 1)  # [T, S, P]
    out_p = net(x[:, None], parts)
    assert_close(out_p, out.transpose(0, 1), atol=1e-6, what="particle layout")


def test_unflatten_flatten_round_trip(generator):
    net = FunctionalMLP((1, 4, 2))
    phi = net.init_params(5, generator=generator)
    layers = net.unflatten(phi)
    assert [tuple(W.shape) for W, _ in layers] == [(5, 1, 4), (5, 4, 2)]
    assert torch.equal(net.flatten(layers), phi)


def test_init_params_is_seeded_and_bounded():
    net = FunctionalMLP((4, 16, 1))
    a = net.init_params(generator=torch.Generator().manual_seed(1))
    b = net.init_params(generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (net.num_params,)
    W0 = net.unflatten(a)[0][0]
    assert float(W0.abs().max()) <= 0.5 and float(W0.abs().max()) > 0.4  # U(-1/sqrt(4), 1/sqrt(4))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sizes"):
        FunctionalMLP((3,))
    with pytest.raises(ValueError, match="activation"):
        FunctionalMLP((1, 2), activation="swishy")
    net = FunctionalMLP((1, 3, 1))
    with pytest.raises(ValueError, match="phi"):
        net(torch.zeros(2, 4, 1), torch.zeros(2, net.num_params + 1))
    with pytest.raises(ValueError, match="x"):
        net(torch.zeros(2, 4, 2), torch.zeros(2, net.num_params))
