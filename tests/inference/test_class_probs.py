"""PosteriorPredictive.class_probs: the mean over draws of each draw's class probabilities, by hand."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_meta
from pyro_meta import MetaModel, TaskBatch, observe, task_plate
from pyro_meta.likelihoods import BernoulliLabels
from pyro_meta.testing import assert_close


class _Softmax(MetaModel):
    """``b_t ~ N(0, I_3)``, ``y ~ Categorical(logits = b_t + x w)``; guide ``N(q, 0.8^2)``."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.5, 0.0, -1.5]))
        self.q = nn.Parameter(torch.tensor([0.5, 0.0, -0.5]))

    def model(self, batch):
        with task_plate(batch):
            b = pyro.sample("b", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            observe(batch, lambda x: dist.Categorical(logits=b + x * self.w))

    def guide(self, batch):
        with task_plate(batch):
            pyro.sample("b", dist.Normal(self.q.expand(batch.num_tasks, 1, 3), 0.8).to_event(1))


class _Logistic(MetaModel):
    """``b_t ~ N(0, 1)``, ``y ~ Bernoulli(sigmoid(b_t + 2 x))`` on long labels."""

    def model(self, batch):
        with task_plate(batch):
            b = pyro.sample("b", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            observe(batch, lambda x: BernoulliLabels(logits=(b + 2 * x)[..., 0]))

    def guide(self, batch):
        with task_plate(batch):
            pyro.sample("b", dist.Normal(torch.full((batch.num_tasks, 1, 1), 0.3), 0.5).to_event(1))


def _batch(num_classes, generator, ragged=True):
    T, nc, nt = 3, 4, 6
    x = 4 * torch.rand(T, nc + nt, 1, generator=generator) - 2
    y = torch.randint(0, num_classes, (T, nc + nt), generator=generator)
    tmask = torch.ones(T, nt, dtype=torch.bool)
    if ragged:
        tmask[0, 4:] = False
    return TaskBatch(x[:, :nc], y[:, :nc], x[:, nc:], y[:, nc:], target_mask=tmask)


@pytest.mark.parametrize("vectorized", [True, False])
def test_categorical_class_probs_are_the_mean_of_each_draws_probabilities(generator, vectorized):
    model, batch = _Softmax(), _batch(3, generator)
    model.vectorized = vectorized
    post = pyro_meta.infer(model, batch, method="amortized", num_samples=7, seed=0)
    pred = post.predict()
    b = post.samples["b"].reshape(-1, 3, 1, 3)  # [S, T, 1, K]
    expected = torch.softmax(b + batch.target_x * model.w.detach(), -1).mean(0)  # [T, Nt, K]
    probs = pred.class_probs
    assert probs.shape == (3, 6, 3)
    m = batch.target_mask
    assert_close(probs[m], expected[m], atol=1e-6, what="class_probs")
    # not a histogram of 7 sampled labels: the probabilities are not multiples of 1/7
    assert not torch.allclose(probs[m] * 7, (probs[m] * 7).round(), atol=1e-3)
    assert_close(probs.sum(-1), torch.ones(3, 6), atol=1e-6, what="rows sum to 1")
    assert_close(probs[~m], torch.full_like(probs[~m], 1 / 3), atol=1e-7, what="padded points are uniform")
    # log probs agree with the pointwise log predictive density of the observed labels
    lp = pred.log_prob(batch.target_y)
    picked = pred.class_log_probs.gather(-1, batch.target_y[..., None])[..., 0]
    assert_close(picked[m], lp[m], atol=1e-5, what="class_log_probs vs log_prob")


def test_bernoulli_on_long_labels_has_two_classes(generator):
    model, batch = _Logistic(), _batch(2, generator, ragged=False)
    post = pyro_meta.infer(model, batch, method="amortized", num_samples=5, seed=1)
    pred = post.predict()
    assert pred.samples.dtype == torch.long and pred.is_classification
    b = post.samples["b"].reshape(-1, 3, 1, 1)
    p1 = torch.sigmoid(b + 2 * batch.target_x)[..., 0].mean(0)  # [T, Nt]
    assert_close(pred.class_probs, torch.stack([1 - p1, p1], -1), atol=1e-6, what="Bernoulli class_probs")
    lp = pred.log_prob(batch.target_y)  # long labels: no dtype error
    assert bool(torch.isfinite(lp).all())
    # the whole evaluation path scores it; accuracy_se is the standard error of the per-task accuracies
    table = pyro_meta.evaluate(model, batch, methods="amortized", num_context=4, num_samples=5)
    row = table.rows[0]
    assert 0.0 <= row["accuracy"] <= 1.0
    resplit = batch.split(4, torch.Generator().manual_seed(0))
    pred = pyro_meta.infer(model, resplit, method="amortized", num_samples=5, seed=0).predict()
    per_task = (pred.class_probs.argmax(-1) == resplit.target_y).double().mean(-1)  # equal set sizes here
    assert abs(row["accuracy"] - float(per_task.mean())) < 1e-9
    assert abs(row["accuracy_se"] - float(per_task.std() / 3**0.5)) < 1e-9


def test_interval_refuses_class_labels_and_class_probs_refuse_regression(generator):
    model, batch = _Softmax(), _batch(3, generator)
    pred = pyro_meta.infer(model, batch, method="amortized", num_samples=4, seed=0).predict()
    with pytest.raises(ValueError, match="class labels.*class_probs"):
        pred.interval(0.9)
    from pyro_meta.models import BayesianLinear

    reg = pyro_meta.data.LinearTasks().sample(2, 3, 4, generator=generator)
    rpred = pyro_meta.infer(BayesianLinear(), reg, method="amortized", num_samples=4, seed=0).predict()
    with pytest.raises(ValueError, match="regression"):
        _ = rpred.class_probs
    lo, hi = rpred.interval(0.9)
    assert bool((lo <= hi).all())
