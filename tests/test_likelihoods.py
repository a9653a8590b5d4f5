"""Likelihoods from network outputs and class log-probabilities of label distributions, against closed forms."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_meta.inference.draws import StackedFns
from pyro_meta.likelihoods import BernoulliLabels, label_log_probs, likelihood_from_outputs, num_outputs
from pyro_meta.testing import assert_close


def test_bernoulli_labels_scores_long_and_bool_labels_and_samples_long():
    logits = torch.tensor([-1.0, 0.5, 2.0])
    d = BernoulliLabels(logits=logits)
    y = torch.tensor([0, 1, 1])
    expected = y * torch.nn.functional.logsigmoid(logits) + (1 - y) * torch.nn.functional.logsigmoid(-logits)
    assert_close(d.log_prob(y), expected, atol=1e-6, what="long labels")
    assert_close(d.log_prob(y.bool()), expected, atol=1e-6, what="bool labels")
    assert_close(d.log_prob(y.float()), expected, atol=1e-6, what="float labels")
    assert d.sample((4,)).dtype == torch.long
    # expanded by a plate, as in a Pyro trace
    with pyro.plate("p", 3):
        e = d.expand([2, 3])
    assert isinstance(e, BernoulliLabels) and e.log_prob(y).shape == (2, 3)


def test_label_log_probs_of_each_family():
    logits = torch.randn(4, 5, 3)
    assert_close(
        label_log_probs(dist.Categorical(logits=logits)), torch.log_softmax(logits, -1), atol=1e-6, what="categorical"
    )
    b = torch.randn(4, 5)
    p = torch.sigmoid(b)
    assert_close(
        label_log_probs(BernoulliLabels(logits=b)).exp(), torch.stack([1 - p, p], -1), atol=1e-6, what="bernoulli"
    )
    binom = dist.Binomial(total_count=2, probs=p)  # finite support 0, 1, 2
    expected = torch.stack([(1 - p) ** 2, 2 * p * (1 - p), p**2], -1)
    assert_close(label_log_probs(binom).exp(), expected, atol=1e-6, what="enumerated support")
    expanded = dist.Categorical(logits=logits[0]).expand([4, 5])
    assert label_log_probs(expanded).shape == (4, 5, 3)
    stacked = StackedFns([dist.Categorical(logits=logits[i]) for i in range(4)])
    assert_close(label_log_probs(stacked), torch.log_softmax(logits, -1), atol=1e-6, what="stacked draws")
    with pytest.raises(ValueError, match="class labels"):
        label_log_probs(dist.Normal(torch.zeros(3), 1.0))


def test_likelihood_from_outputs_and_sizes():
    out = torch.randn(2, 3, 4)
    assert likelihood_from_outputs("categorical", out).batch_shape == (2, 3)
    assert likelihood_from_outputs("bernoulli", out[..., :1]).batch_shape == (2, 3)
    normal = likelihood_from_outputs("normal", out, torch.tensor(0.5))
    assert normal.batch_shape == (2, 3) and normal.event_shape == (4,)
    assert (num_outputs("normal", 3), num_outputs("bernoulli"), num_outputs("categorical", num_classes=5)) == (3, 1, 5)
    with pytest.raises(ValueError, match="num_classes"):
        num_outputs("categorical")
    with pytest.raises(ValueError, match="likelihood"):
        num_outputs("poisson")
