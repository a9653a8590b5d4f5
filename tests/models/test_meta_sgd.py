"""MetaSGD: the contract, its one step against a per-task loop with per-weight step sizes, and learned step sizes."""

import pytest
import torch

from pyro_meta import fit
from pyro_meta.data import Sinusoid
from pyro_meta.models import MAML, MetaSGD
from pyro_meta.testing import MetaModelContract, assert_close


class TestMetaSGDContract(MetaModelContract):
    def make_model(self):
        return MetaSGD(hidden=(8,))


def test_one_step_uses_each_weights_own_step_size(generator):
    """``phi_t = theta - alpha * grad L_ctx(theta)`` with ``alpha [P]``, checked task by task with autograd."""
    model = MetaSGD(hidden=(6,), learn_noise=False)
    with torch.no_grad():
        model.log_inner_lr.copy_(torch.empty(model.num_params).uniform_(-5, -1, generator=generator))
    batch = Sinusoid(noise_std=0.1).sample(3, (2, 5), 4, generator=generator)
    phi = model.adapt(batch.context_x, batch.context_y, batch.context_mask)
    for t in range(batch.num_tasks):
        theta = model.theta.detach().clone().requires_grad_(True)
        m = batch.context_mask[t]
        out = model.net(batch.context_x[t][m][None], theta[None])[0]
        (g,) = torch.autograd.grad(((out - batch.context_y[t][m]) ** 2).mean(), theta)
        assert_close(phi[t].detach(), theta.detach() - model.inner_lr.detach() * g, atol=1e-6, what=f"task {t}")


def test_equal_step_sizes_reduce_to_maml_and_training_spreads_them(generator):
    torch.manual_seed(0)
    maml = MAML(hidden=(8,), inner_lr=0.02, learn_noise=False)
    sgd = MetaSGD(hidden=(8,), inner_lr=0.02, learn_noise=False)
    with torch.no_grad():
        sgd.theta.copy_(maml.theta)
    batch = Sinusoid().sample(4, 5, 5, generator=generator)
    assert_close(sgd.loss(batch).detach(), maml.loss(batch).detach(), atol=1e-6, what="loss at equal step sizes")
    fit(sgd, Sinusoid(), num_steps=30, tasks_per_batch=4, lr=1e-2, seed=0, progress=False)
    assert sgd.inner_lr.shape == (sgd.num_params,) and float(sgd.inner_lr.std()) > 1e-4
    with pytest.raises(TypeError, match="learn_inner_lr"):
        MetaSGD(learn_inner_lr=False)
