"""inner_loop against closed forms and a per-task torch.func reference."""

import pytest
import torch
from torch import nn

from pyro_meta.nn import FunctionalMLP, inner_loop
from pyro_meta.testing import assert_close


def test_inner_loop_bad_arguments_raise():
    with pytest.raises(ValueError, match="steps"):
        inner_loop(lambda p: p.sum(), torch.zeros(2), -1, 0.1)
    with pytest.raises(TypeError, match="params"):
        inner_loop(lambda p: p.sum(), [1.0], 1, 0.1)


def test_inner_loop_quadratic_closed_form():
    """loss_t = a_t/2 (p - c_t)^2: p_K = c + (1 - lr a)^K (p0 - c), d p_K / d p0 = (1 - lr a)^K."""
    a = torch.tensor([1.0, 2.0, 4.0])
    c = torch.tensor([0.5, -1.0, 2.0])
    p0 = torch.tensor([0.0, 0.3, -0.2], requires_grad=True)
    lr, K = 0.1, 5
    pK = inner_loop(lambda p: 0.5 * a * (p - c) ** 2, p0, K, lr)
    factor = (1 - lr * a) ** K
    assert_close(pK.detach(), c + factor * (p0.detach() - c), atol=1e-6, what="p_K")
    (grad,) = torch.autograd.grad(pK.sum(), p0)
    assert_close(grad, factor, atol=1e-6, what="d p_K / d p0 (second order)")
    # first order: the Hessian path is dropped, d p_K / d p0 = 1
    pK1 = inner_loop(lambda p: 0.5 * a * (p - c) ** 2, p0, K, lr, first_order=True)
    (grad1,) = torch.autograd.grad(pK1.sum(), p0)
    assert_close(grad1, torch.ones(3), atol=0, what="d p_K / d p0 (first order)")


def test_inner_loop_learned_lr_gradient():
    """One step: p1 = p0 - lr g, so d p1 / d lr = -g."""
    lr = torch.tensor(0.3, requires_grad=True)
    p0 = torch.tensor([1.0, -2.0])
    p1 = inner_loop(lambda p: (p**2).sum(-1), p0, 1, lr)
    (g,) = torch.autograd.grad(p1.sum(), lr)
    assert_close(g, -(2 * p0).sum(), atol=1e-6, what="d p1 / d lr")


def test_inner_loop_without_grad_tracking_returns_detached():
    p0 = torch.tensor([1.0, 2.0])
    with torch.no_grad():
        p = inner_loop(lambda p: (p**2).sum(), p0, 3, 0.25)
    assert not p.requires_grad
    assert_close(p, p0 * 0.5**3, atol=1e-7, what="p_3")


def test_maml_meta_gradient_matches_torch_func(generator):
    """A batched second-order MAML gradient equals a per-task torch.func reference."""
    torch.manual_seed(0)
    net = FunctionalMLP((1, 8, 8, 1))
    T, Nc, Nt = 3, 5, 4
    xc, xt = torch.randn(T, Nc, 1, generator=generator), torch.randn(T, Nt, 1, generator=generator)
    yc, yt = torch.sin(xc), torch.sin(xt)
    theta = net.init_params(generator=generator).requires_grad_(True)

    def ctx_loss(p):
        return ((net(xc, p) - yc) ** 2).mean((-1, -2))

    phi = inner_loop(ctx_loss, theta.expand(T, -1), 2, 0.05)
    meta = ((net(xt, phi) - yt) ** 2).mean((-1, -2)).sum()
    (g,) = torch.autograd.grad(meta, theta)

    from torch.func import functional_call, grad

    ref_net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    names = [n for n, _ in ref_net.named_parameters()]

    def to_dict(flat):
        out = {}
        for (W, b), i in zip(net.unflatten(flat), range(0, len(names), 2)):
            out[names[i]], out[names[i + 1]] = W.T, b
        return out

    def task_meta(flat, t):
        def lc(params):
            return ((functional_call(ref_net, params, (xc[t],)) - yc[t]) ** 2).mean()

        params = to_dict(flat)
        for _ in range(2):
            gp = grad(lc)(params)
            params = {k: params[k] - 0.05 * gp[k] for k in params}
        return ((functional_call(ref_net, params, (xt[t],)) - yt[t]) ** 2).mean()

    ref = sum(grad(task_meta)(theta.detach(), t) for t in range(T))
    assert_close(g, ref, atol=1e-5, rtol=1e-4, what="meta-gradient")
