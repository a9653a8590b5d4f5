"""Models without a task latent (conditional models) are first-class: amortized predictive, clear refusals."""

import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_meta
from pyro_meta import MetaModel, observe, task_plate
from pyro_meta.data import Sinusoid
from pyro_meta.nn import masked_mean
from pyro_meta.testing import MetaModelContract


class TinyCNP(MetaModel):
    """A conditional NP: ``y ~ N(mu(x, r_C), sigma(x, r_C)^2)``, ``r_C`` the mean embedding of the context."""

    def __init__(self, hidden=16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.decoder = nn.Sequential(nn.Linear(1 + hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def model(self, batch):
        r = masked_mean(self.encoder(torch.cat([batch.context_x, batch.context_y], -1)), batch.context_mask)

        def likelihood(x):
            h = torch.cat([x, r[:, None, :].expand(*x.shape[:-1], -1)], -1)
            loc, raw = self.decoder(h).chunk(2, -1)
            return dist.Normal(loc, 0.01 + nn.functional.softplus(raw)).to_event(1)

        with task_plate(batch):
            observe(batch, likelihood, splits=("target",))

    def guide(self, batch):
        pass

    def loss(self, batch):
        """``-log p(y_target | x_target, context)`` per target point (the CNP objective)."""
        r = masked_mean(self.encoder(torch.cat([batch.context_x, batch.context_y], -1)), batch.context_mask)
        h = torch.cat([batch.target_x, r[:, None, :].expand(-1, batch.target_x.shape[1], -1)], -1)
        loc, raw = self.decoder(h).chunk(2, -1)
        lp = dist.Normal(loc, 0.01 + nn.functional.softplus(raw)).log_prob(batch.target_y).sum(-1)
        return -(lp * batch.target_mask).sum() / batch.target_mask.sum()


class TestConditionalContract(MetaModelContract):
    has_task_latent = False

    def make_model(self):
        return TinyCNP()


def test_conditional_model_posterior_predicts_and_scores():
    model = TinyCNP()
    tasks = Sinusoid(noise_std=0.1)
    kw = dict(methods=["amortized"], num_tasks=10, num_context=[3], seed=0)
    before = pyro_meta.evaluate({"cnp": model}, tasks, **kw).rows[0]["nll"]
    pyro_meta.fit(model, tasks, num_steps=200, tasks_per_batch=16, lr=1e-2, progress=False)
    batch = tasks.sample(5, 5, 20, generator=torch.Generator().manual_seed(1))
    post = pyro_meta.infer(model, batch, num_samples=30, seed=0)
    assert post.samples == {} and not post.has_latents and (post.num_chains, post.num_samples) == (1, 30)
    pred = post.predict()
    assert pred.samples.shape == (1, 30, 5, 20, 1)
    with pytest.raises(ValueError, match="no latent site"):
        post.mean()
    with pytest.raises(ValueError, match="TinyCNP.model has no task-level latent"):
        pyro_meta.infer(model, batch, method="nuts")
    after = pyro_meta.evaluate({"cnp": model}, tasks, **kw).rows[0]["nll"]
    assert after < before - 0.5, (before, after)  # scored through its predictive, and training shows in it
    idata = post.to_arviz()
    assert "posterior" not in idata.groups() and "posterior_predictive" in idata.groups()
