"""MAML: the contract, and its meta-objective against an independent per-task PyTorch MAML."""

import pyro
import pytest
import torch
from torch import nn
from torch.func import functional_call

from pyro_meta import fit, infer
from pyro_meta.data import Sinusoid
from pyro_meta.models import MAML
from pyro_meta.testing import MetaModelContract, assert_close


class TestMAMLContract(MetaModelContract):
    def make_model(self):
        return MAML(hidden=(8,), inner_steps=2)


def _reference_loss(model: MAML, batch, steps: int, first_order: bool = False) -> torch.Tensor:
    """Per-task loop MAML on nn.Linear layers with the model's weights (independent code path)."""
    sizes = model.net.sizes
    layers = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    ref = nn.Sequential(*layers[:-1])
    names = [n for n, _ in ref.named_parameters()]
    params = {}
    for (W, b), i in zip(model.net.unflatten(model.theta), range(0, len(names), 2)):
        params[names[i]], params[names[i + 1]] = W.T, b
    lr = float(model.inner_lr)
    total = 0.0
    for t in range(batch.num_tasks):
        mc, mt = batch.context_mask[t], batch.target_mask[t]
        fast = params
        for _ in range(steps):
            out = functional_call(ref, fast, (batch.context_x[t][mc],))
            inner = ((out - batch.context_y[t][mc]) ** 2).mean()
            grads = torch.autograd.grad(inner, list(fast.values()), create_graph=not first_order)
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
        total = total + ((functional_call(ref, fast, (batch.target_x[t][mt],)) - batch.target_y[t][mt]) ** 2).mean()
    return total / batch.num_tasks


@pytest.mark.parametrize("first_order", [False, True])
def test_loss_and_meta_gradient_match_per_task_reference(generator, first_order):
    model = MAML(hidden=(10, 10), inner_lr=0.05, inner_steps=3, first_order=first_order, learn_noise=False)
    batch = Sinusoid(noise_std=0.1).sample(4, (2, 6), (3, 7), generator=generator)  # ragged: masks matter
    ours = model.loss(batch)
    ref = _reference_loss(model, batch, 3, first_order)
    assert_close(ours.detach(), ref.detach(), atol=1e-5, rtol=1e-5, what="meta-loss")
    (g,) = torch.autograd.grad(ours, model.theta)
    (g_ref,) = torch.autograd.grad(ref, model.theta)
    assert_close(g, g_ref, atol=1e-5, rtol=1e-4, what="meta-gradient")


def test_first_and_second_order_gradients_differ(generator):
    batch = Sinusoid().sample(3, 5, 5, generator=generator)
    grads = []
    for fo in (False, True):
        pyro.set_rng_seed(0)
        model = MAML(hidden=(10,), inner_lr=0.1, inner_steps=2, first_order=fo, learn_noise=False)
        grads.append(torch.autograd.grad(model.loss(batch), model.theta)[0])
    assert float((grads[0] - grads[1]).abs().max()) > 1e-4


def test_guide_is_the_adapted_point_mass_with_eval_steps(generator):
    model = MAML(hidden=(8,), inner_steps=1, eval_inner_steps=4)
    batch = Sinusoid().sample(3, 5, 5, generator=generator)
    model.eval()
    tr = pyro.poutine.trace(model.guide).get_trace(batch)
    phi = tr.nodes["phi"]["value"]
    expected = model.adapt(batch.context_x, batch.context_y, batch.context_mask, steps=4)
    assert_close(phi.detach(), expected.detach().unsqueeze(-2), atol=1e-6, what="guide phi")
    model.train()
    assert model.num_steps == 1
    post = infer(model, batch, method="amortized", num_samples=3, seed=0)
    assert post.samples["phi"].shape == (1, 3, 3, model.num_params)
    assert torch.equal(post.samples["phi"][0, 0], post.samples["phi"][0, 2]), "a point mass gives equal draws"
    assert_close(post.samples["phi"][0, 0], expected.detach(), atol=1e-6, what="amortized draw")


def test_noise_gradient_is_its_maximum_likelihood_score(generator):
    """d loss / d log noise = 1 - MSE / noise^2 (per point), and the loss value is the plain MSE."""
    model = MAML(hidden=(8,), noise_std=0.5)
    batch = Sinusoid().sample(3, 5, 6, generator=generator)
    loss = model.loss(batch)
    phi = model.adapt(batch.context_x, batch.context_y, batch.context_mask)
    mse = model.mse(batch.target_x, batch.target_y, batch.target_mask, phi).detach()
    assert_close(loss.detach(), mse.mean(), atol=1e-6, what="loss value")
    (g,) = torch.autograd.grad(loss, model.log_noise)
    assert_close(g, (1 - mse / 0.25).mean(), atol=1e-4, rtol=1e-4, what="d loss / d log noise")


def test_noise_is_fit_to_the_test_time_adaptation(generator):
    """With eval_inner_steps != inner_steps the noise's score uses the residuals after the eval steps."""
    model = MAML(hidden=(8,), noise_std=0.5, inner_lr=0.05, inner_steps=1, eval_inner_steps=4)
    batch = Sinusoid().sample(3, 5, 6, generator=generator)
    (g,) = torch.autograd.grad(model.loss(batch), model.log_noise)
    phi = model.adapt(batch.context_x, batch.context_y, batch.context_mask, steps=4).detach()
    mse_eval = model.mse(batch.target_x, batch.target_y, batch.target_mask, phi)
    phi1 = model.adapt(batch.context_x, batch.context_y, batch.context_mask, steps=1).detach()
    mse_train = model.mse(batch.target_x, batch.target_y, batch.target_mask, phi1)
    n = batch.target_mask.sum(-1).float()
    expected = 1 - (mse_eval * n).sum() / n.sum() / 0.25  # per real point, pooled over tasks
    assert_close(g, expected, atol=1e-4, rtol=1e-4, what="d loss / d log noise")
    assert not torch.allclose(mse_eval, mse_train), "eval and train adaptation coincide: the test proves nothing"


def test_meta_training_improves_adapted_mse():
    """A short meta-training run lowers the post-adaptation sinusoid MSE (fixed test tasks)."""
    torch.manual_seed(0)
    model = MAML(hidden=(20, 20), inner_lr=0.01, inner_steps=1, eval_inner_steps=5)
    test = Sinusoid().sample(100, 10, 20, generator=torch.Generator().manual_seed(123))

    def test_mse():
        model.eval()
        phi = model.adapt(test.context_x, test.context_y, test.context_mask).detach()
        return float(model.mse(test.target_x, test.target_y, test.target_mask, phi).mean())

    before = test_mse()
    fit(
        model,
        Sinusoid(),
        num_steps=300,
        tasks_per_batch=10,
        num_context=10,
        num_target=10,
        lr=3e-3,
        seed=0,
        progress=False,
    )
    after = test_mse()
    assert after < 0.6 * before, (before, after)


def test_bad_arguments_raise(generator):
    with pytest.raises(ValueError, match="inner_lr"):
        MAML(inner_lr=-0.1)
    with pytest.raises(ValueError, match="inner_steps"):
        MAML(inner_steps=-1)
    with pytest.raises(ValueError, match="x_dim"):
        MAML(x_dim=0)
    model = MAML(hidden=(4,), x_dim=2)
    with pytest.raises(ValueError, match="x_dim"):
        model.loss(Sinusoid().sample(2, 3, 3, generator=generator))
    with pytest.raises(TypeError, match="batch"):
        MAML(hidden=(4,)).loss("not a batch")
    with pytest.raises(ValueError, match="target"):
        MAML(hidden=(4,)).loss(Sinusoid().sample(2, 3, 3, generator=generator).context_only())


@pytest.mark.parametrize("name", ["MAML", "ABML", "BMAML", "PLATIPUS"])
def test_family_exports_to_arviz_with_pointwise_log_likelihood(generator, name):
    """to_arviz on the shared phi model: named dims, and y_context's log-likelihood by hand."""
    import pyro_meta.models as zoo

    model = getattr(zoo, name)(hidden=(4,), inner_steps=1)
    batch = Sinusoid(noise_std=0.1).sample(2, (2, 3), 4, generator=generator)
    post = infer(model, batch, method="amortized", num_samples=5, seed=0)
    idata = post.to_arviz()
    assert idata.posterior["phi"].dims == ("chain", "draw", "task", "phi_dim_0")
    assert idata.posterior["phi"].shape == (1, 5, 2, model.num_params)
    assert idata.posterior_predictive["y_target"].shape[:4] == (1, 5, 2, 4)
    phi = post.samples["phi"][0]  # [S, T, P]
    with torch.no_grad():
        mean = model.net(batch.context_x, phi.unsqueeze(-2))  # [S, T, Nc, 1]
        lp = torch.distributions.Normal(mean, model.noise_std).log_prob(batch.context_y)[..., 0]
    expected = lp[:, batch.context_mask]  # [S, real context points], task-major order
    actual = torch.as_tensor(idata.log_likelihood["y_context"].values[0])
    assert_close(actual, expected, atol=1e-4, what="pointwise log-likelihood")


@pytest.mark.parametrize("name", ["MAML", "ABML", "BMAML", "PLATIPUS"])
def test_family_loss_with_more_test_time_steps_fits_only_the_noise_extra(generator, name):
    """eval_inner_steps != inner_steps: the loss value is unchanged and the noise still gets a gradient."""
    import pyro_meta.models as zoo

    batch = Sinusoid(noise_std=0.3).sample(3, 5, 5, generator=generator)
    values = []
    for eval_steps in (1, 3):
        pyro.set_rng_seed(0)
        model = getattr(zoo, name)(hidden=(6,), inner_steps=1, eval_inner_steps=eval_steps)
        torch.manual_seed(1)
        loss = model.loss(batch)
        (g,) = torch.autograd.grad(loss, model.log_noise)
        assert bool(torch.isfinite(g)) and float(g.abs()) > 0
        values.append(float(loss.detach()))
    assert values[0] == pytest.approx(values[1], rel=1e-5, abs=1e-6)
