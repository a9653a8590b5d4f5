"""ProtoNet: the contract on toy episodes, and its predictive / loss against a hand-written prototypical network."""

import pytest
import torch

import pyro_meta
from pyro_meta.models import ProtoNet
from pyro_meta.testing import MetaModelContract, assert_close, toy_episodes


class TestProtoNetContract(MetaModelContract):
    num_context = (1, 2)
    num_target = 2

    def make_model(self):
        return ProtoNet(backbone="mlp", x_dim=4, hidden=(8,), feature_dim=3)

    def make_tasks(self):
        return toy_episodes(way=3, dim=4)


def _hand_logits(model, batch):
    """``-||h(x_target) - mean_{context of class k} h||^2`` with torch.cdist (independent code path)."""
    with torch.no_grad():
        hc = model.features(batch.context_x)
        ht = model.features(batch.target_x)
    T, K = batch.num_tasks, int(batch.info["way"])
    out = []
    for t in range(T):
        protos = torch.stack([hc[t][batch.context_mask[t] & (batch.context_y[t] == k)].mean(0) for k in range(K)])
        out.append(-(torch.cdist(ht[t], protos) ** 2))
    return torch.stack(out)


def test_amortized_predictive_is_the_prototype_softmax():
    tasks = toy_episodes(way=3, dim=4, shots=(1, 3), queries=3)
    model = ProtoNet(backbone="mlp", x_dim=4, hidden=(8,))
    pyro_meta.fit(model, tasks, num_steps=5, tasks_per_batch=4, lr=1e-2, progress=False)
    batch = tasks.sample(4, generator=torch.Generator().manual_seed(1))
    post = pyro_meta.infer(model, batch, method="amortized", num_samples=3, seed=0)
    probs = post.predict().class_probs
    expected = torch.softmax(_hand_logits(model, batch), -1)
    m = batch.target_mask
    assert_close(probs[m], expected[m], atol=1e-5, what="ProtoNet class probabilities")
    # the posterior 'samples' are the prototypes themselves, identical across draws
    assert post.samples["prototypes"].shape == (1, 3, 4, 3, model.feature_dim)


def test_loss_is_the_episode_cross_entropy():
    tasks = toy_episodes(way=3, dim=4, shots=2, queries=3)
    model = ProtoNet(backbone="mlp", x_dim=4, hidden=(8,))
    model.eval()  # no batch norm in the MLP: train and eval mode agree
    batch = tasks.sample(5, generator=torch.Generator().manual_seed(2))
    loss = model.loss(batch)
    logits = _hand_logits(model, batch)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), batch.target_y.reshape(-1))
    assert_close(loss.detach(), expected, atol=1e-5, what="ProtoNet loss")
    # one model serves any way: 5-way batches give 5 prototypes
    five = toy_episodes(way=5, num_classes=6, dim=4).sample(2, generator=torch.Generator().manual_seed(3))
    post = pyro_meta.infer(model, five, method="amortized", num_samples=2, seed=0)
    assert post.samples["prototypes"].shape[-2] == 5


def test_conv4_backbone_and_bad_inputs():
    tasks = toy_episodes(way=2, num_classes=4, per_class=4, image_shape=(16, 16), shots=1, queries=1)
    model = ProtoNet(image_shape=(1, 16, 16), channels=4)
    result = pyro_meta.fit(model, tasks, num_steps=2, tasks_per_batch=2, progress=False)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    batch = tasks.sample(2, generator=torch.Generator().manual_seed(0))
    assert pyro_meta.infer(model, batch, method="amortized", num_samples=2).predict().class_probs.shape == (2, 2, 2)
    with pytest.raises(ValueError, match="class labels"):
        model.model(pyro_meta.data.LinearTasks().sample(2, 2, 2))
    with pytest.raises(ValueError, match="Dx"):
        ProtoNet(image_shape=(1, 28, 28), channels=4).model(batch)
    with pytest.raises(ValueError, match="num_classes"):
        ProtoNet(num_classes=1)
