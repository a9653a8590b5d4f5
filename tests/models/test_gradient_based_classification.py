"""The MAML family on class labels: contracts on toy episodes, losses against per-task PyTorch references, Conv-4."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import pyro_meta
from pyro_meta.models import ABML, BMAML, MAML, PLATIPUS
from pyro_meta.testing import MetaModelContract, assert_close, toy_episodes

WAY, DIM = 3, 4


class _ToyEpisodes:
    num_context = (1, 2)
    num_target = 2

    def make_tasks(self):
        return toy_episodes(way=WAY, dim=DIM)


class TestMAMLCategoricalContract(_ToyEpisodes, MetaModelContract):
    def make_model(self):
        return MAML(x_dim=DIM, hidden=(8,), likelihood="categorical", num_classes=WAY, inner_lr=0.3, inner_steps=2)


class TestABMLCategoricalHeadContract(_ToyEpisodes, MetaModelContract):
    def make_model(self):
        return ABML(
            x_dim=DIM,
            hidden=(8,),
            likelihood="categorical",
            num_classes=WAY,
            adapt="head",
            inner_lr=0.3,
            inner_lr_scale=0.1,
        )


class TestBMAMLBernoulliContract(MetaModelContract):
    num_context = (1, 2)
    num_target = 2

    def make_tasks(self):
        return toy_episodes(way=2, dim=DIM)

    def make_model(self):
        return BMAML(x_dim=DIM, hidden=(8,), likelihood="bernoulli", num_particles=3, adapt="head")


class TestPLATIPUSCategoricalContract(_ToyEpisodes, MetaModelContract):
    def make_model(self):
        return PLATIPUS(x_dim=DIM, hidden=(8,), likelihood="categorical", num_classes=WAY, inner_lr=0.3)


def _reference_maml(model, batch, steps, loss_fn, features=None):
    """Per-task loop MAML with nn.Linear layers and ``loss_fn(out, y)`` (independent of the flat-weight code)."""
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
    xc = batch.context_x if features is None else features[0]
    xt = batch.target_x if features is None else features[1]
    total = 0.0
    for t in range(batch.num_tasks):
        mc, mt = batch.context_mask[t], batch.target_mask[t]
        fast = params
        for _ in range(steps):
            inner = loss_fn(functional_call(ref, fast, (xc[t][mc],)), batch.context_y[t][mc])
            grads = torch.autograd.grad(inner, list(fast.values()), create_graph=True)
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
        total = total + loss_fn(functional_call(ref, fast, (xt[t][mt],)), batch.target_y[t][mt])
    return total / batch.num_tasks


def _bce(out, y):
    return F.binary_cross_entropy_with_logits(out[:, 0], y.float())


@pytest.mark.parametrize("likelihood, way, loss_fn", [("categorical", 3, F.cross_entropy), ("bernoulli", 2, _bce)])
def test_maml_loss_is_the_cross_entropy_after_adaptation(likelihood, way, loss_fn):
    tasks = toy_episodes(way=way, dim=DIM, shots=(1, 3), queries=(1, 3))
    batch = tasks.sample(4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = MAML(
        x_dim=DIM,
        hidden=(8,),
        likelihood=likelihood,
        num_classes=way if likelihood == "categorical" else None,
        inner_lr=0.5,
        inner_steps=2,
    )
    loss = model.loss(batch)
    expected = _reference_maml(model, batch, 2, loss_fn)
    assert_close(loss, expected, atol=1e-5, what=f"MAML {likelihood} loss")
    # and its meta-gradient (second order through the inner steps)
    (g,) = torch.autograd.grad(loss, model.theta)
    (g_ref,) = torch.autograd.grad(expected, model.theta)
    assert_close(g, g_ref, atol=1e-5, what="meta-gradient")


def test_head_adaptation_adapts_only_the_last_layer_on_shared_features():
    tasks = toy_episodes(way=WAY, dim=DIM, shots=2, queries=2)
    batch = tasks.sample(3, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = MAML(
        x_dim=DIM, hidden=(8, 6), likelihood="categorical", num_classes=WAY, adapt="head", inner_lr=0.5, inner_steps=1
    )
    assert model.num_params == 6 * WAY + WAY  # the head only
    assert model.net.sizes == (6, WAY)
    feats = (model.backbone(batch.context_x), model.backbone(batch.target_x))  # an MLP: no batch statistics
    expected = _reference_maml(model, batch, 1, F.cross_entropy, features=feats)
    assert_close(model.loss(batch), expected, atol=1e-5, what="head-only MAML loss")
    # the shared features get a meta-gradient, theta has the head's size
    model.loss(batch).backward()
    assert model.backbone.net[0][0].weight.grad.abs().sum() > 0
    post = pyro_meta.infer(
        model, batch, method="nuts", num_samples=5, num_warmup=5, num_chains=1, max_tree_depth=3, seed=0
    )
    assert post.samples["phi"].shape == (1, 5, 3, model.num_params)


@pytest.mark.parametrize(
    "cls, objective", [(MAML, None), (ABML, None), (BMAML, None), (BMAML, "bfa"), (PLATIPUS, None)]
)
def test_family_learns_toy_episodes(cls, objective):
    """A few dozen meta-steps: every member (and BMAML's second objective) classifies held-out toy episodes."""
    tasks = toy_episodes(way=WAY, num_classes=12, dim=DIM, shots=2, queries=3, seed=1)
    options = {"x_dim": DIM, "hidden": (16,), "likelihood": "categorical", "num_classes": WAY, "inner_steps": 2}
    extra = {
        MAML: {"inner_lr": 0.5},
        ABML: {"inner_lr": 0.5, "inner_lr_scale": 0.1, "prior_scale": 0.1},
        BMAML: {"num_particles": 3, "svgd_lr": 0.5},
        PLATIPUS: {"inner_lr": 0.5},
    }[cls]
    model = cls(**options, **extra, **({} if objective is None else {"objective": objective}))
    pyro_meta.fit(model, tasks, num_steps=60, tasks_per_batch=8, lr=1e-2, seed=0, progress=False)
    table = pyro_meta.evaluate(model, tasks, methods="amortized", num_tasks=40, num_context=2, num_samples=8, seed=3)
    row = table.rows[0]
    assert row["accuracy"] > 0.7, row  # chance is 1/3
    assert 0 <= row["ece"] <= 1 and row["nll"] > 0


def test_conv4_family_runs_on_images():
    tasks = toy_episodes(way=2, num_classes=4, per_class=4, image_shape=(16, 16), shots=1, queries=1)
    batch = tasks.sample(2, generator=torch.Generator().manual_seed(0))
    for cls in (MAML, ABML, BMAML, PLATIPUS):
        model = cls(
            net="conv4",
            image_shape=(1, 16, 16),
            channels=3,
            likelihood="categorical",
            num_classes=2,
            **({"num_particles": 2} if cls is BMAML else {}),
        )
        result = pyro_meta.fit(model, tasks, num_steps=1, tasks_per_batch=2, progress=False)
        assert all(torch.isfinite(torch.tensor(result.losses))), cls.__name__
        probs = pyro_meta.infer(model, batch, method="amortized", num_samples=2, seed=0).predict().class_probs
        assert probs.shape == (2, 2, 2) and bool(torch.isfinite(probs).all())
    # the model's outputs are FunctionalConv4's
    phi = model.theta.detach().expand(2, -1)
    assert_close(
        model.outputs(batch.target_x, phi, batch.target_mask),
        model.net(batch.target_x, phi, batch.target_mask),
        atol=0,
        what="conv outputs",
    )


@pytest.mark.parametrize("net, adapt", [("mlp", "all"), ("mlp", "head"), ("conv4", "all"), ("conv4", "head")])
def test_zero_head_init_zeroes_exactly_the_last_layer(net, adapt):
    """``head_init="zeros"``: the last linear layer of theta is 0, every other number is the random default's."""
    image = {"net": "conv4", "image_shape": (1, 16, 16), "channels": 3} if net == "conv4" else {"hidden": (8, 6)}
    kwargs = dict(x_dim=DIM, likelihood="categorical", num_classes=WAY, adapt=adapt, **image)
    torch.manual_seed(0)
    rand = MAML(**kwargs)
    torch.manual_seed(0)
    zero = MAML(head_init="zeros", **kwargs)
    feature_dim = 3 if net == "conv4" else 6
    head = feature_dim * WAY + WAY
    assert zero.head_size == rand.head_size == head
    assert torch.equal(zero.theta[-head:], torch.zeros(head)) and bool((rand.theta[-head:] != 0).all())
    assert torch.equal(zero.theta[:-head], rand.theta[:-head])  # the same random stream: only the head differs
    for cls in (ABML, PLATIPUS):
        assert torch.equal(cls(head_init="zeros", **kwargs).theta[-head:], torch.zeros(head)), cls.__name__


def test_zero_head_maml_predictions_follow_a_relabelling():
    """From a zero head, MAML's adapted predictive is equivariant to permuting the episode's labels (not so from a
    random head): relabel the context and the class probabilities permute the same way."""
    batch = toy_episodes(way=WAY, dim=DIM, shots=2, queries=2).sample(2, generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([2, 0, 1])  # old label k -> new label perm[k]
    relabelled = batch.replace(context_y=perm[batch.context_y], target_y=perm[batch.target_y])
    gaps = {}
    for head_init in ("zeros", "random"):
        torch.manual_seed(0)
        model = MAML(
            x_dim=DIM,
            hidden=(8,),
            likelihood="categorical",
            num_classes=WAY,
            adapt="head",
            inner_lr=0.5,
            inner_steps=3,
            head_init=head_init,
        ).eval()
        p = pyro_meta.infer(model, batch, method="amortized", num_samples=1, seed=0).predict().class_probs
        q = pyro_meta.infer(model, relabelled, method="amortized", num_samples=1, seed=0).predict().class_probs
        gaps[head_init] = float((q[..., perm] - p).abs().max())
    assert gaps["zeros"] < 1e-6 and gaps["random"] > 1e-3, gaps


def test_bad_options_and_batches():
    with pytest.raises(ValueError, match="num_classes"):
        MAML(likelihood="categorical")
    with pytest.raises(ValueError, match="likelihood"):
        MAML(likelihood="poisson")
    with pytest.raises(ValueError, match="image_shape"):
        MAML(net="conv4", likelihood="categorical", num_classes=2)
    with pytest.raises(ValueError, match="adapt"):
        MAML(adapt="last")
    with pytest.raises(ValueError, match="head_init"):
        MAML(head_init="zero")
    with pytest.raises(ValueError, match="head_init.*particles"):
        BMAML(head_init="zeros")
    episodes = toy_episodes(way=3, dim=DIM).sample(2)
    with pytest.raises(ValueError, match="regression model"):
        MAML(x_dim=DIM).loss(episodes)
    with pytest.raises(ValueError, match="class labels"):
        MAML(likelihood="categorical", num_classes=3).loss(pyro_meta.data.Sinusoid().sample(2, 3, 3))
    with pytest.raises(ValueError, match="labels >= 2"):
        MAML(x_dim=DIM, likelihood="categorical", num_classes=2).loss(episodes)
