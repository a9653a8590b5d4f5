"""BMAML: the contract; the SVGD target, the particle update and the chaser loss against independent computations."""

import pyro
import pytest
import torch
from torch.distributions import Normal

from pyro_meta import infer
from pyro_meta.data import Sinusoid
from pyro_meta.models import BMAML
from pyro_meta.svgd import svgd_direction
from pyro_meta.testing import MetaModelContract, assert_close


class TestBMAMLContract(MetaModelContract):
    def make_model(self):
        return BMAML(hidden=(8,), num_particles=3, inner_steps=2)


def _log_post(model, x, y, p):
    """log N(y | f_p(x), noise^2) + log N(p | theta, sigma^2) for one task and one particle, with torch.distributions."""
    pred = model.net(x[None], p[None])[0]
    return Normal(pred, model.noise_std).log_prob(y).sum() + Normal(model.theta, model.sigma).log_prob(p).sum()


def test_log_posterior_matches_torch_distributions_up_to_a_constant(generator):
    model = BMAML(hidden=(5,), num_particles=3)
    batch = Sinusoid(noise_std=0.1).sample(2, 4, 3, generator=generator)
    particles = model.particles.detach().expand(2, 3, -1) + 0.1 * torch.randn(
        2, 3, model.num_params, generator=generator
    )
    ours = model.log_posterior(batch.context_x, batch.context_y, batch.context_mask)(particles).detach()
    ref = torch.stack(
        [
            torch.stack([_log_post(model, batch.context_x[t], batch.context_y[t], particles[t, m]) for m in range(3)])
            for t in range(2)
        ]
    ).detach()
    diff = ours - ref
    assert_close(diff, diff[0, 0].expand_as(diff), atol=1e-3, what="log posterior up to a constant")


def test_one_chaser_step_is_an_svgd_step_on_the_context(generator):
    model = BMAML(hidden=(5,), num_particles=4, inner_steps=1, svgd_lr=0.1)
    batch = Sinusoid(noise_std=0.1).sample(2, (3, 5), 3, generator=generator)
    out = model.adapt(batch.context_x, batch.context_y, batch.context_mask).detach()
    start = model.particles.detach()
    for t in range(2):
        m = batch.context_mask[t]
        p = start.clone().requires_grad_(True)
        lp = sum(_log_post(model, batch.context_x[t][m], batch.context_y[t][m], p[k]) for k in range(4))
        (score,) = torch.autograd.grad(lp, p)
        base = 0.1 * model.noise_std.detach() ** 2 / int(m.sum())
        step = base / (1 + base / model.sigma.detach() ** 2)  # the diagonal preconditioner, per weight
        assert_close(out[t], start + step * svgd_direction(start, score), atol=1e-5, rtol=1e-4, what=f"task {t}")


def test_chaser_loss_is_zero_without_leader_steps_and_trains_the_initial_particles(generator):
    batch = Sinusoid(noise_std=0.1).sample(3, 4, 4, generator=generator)
    model = BMAML(hidden=(5,), num_particles=3, leader_steps=0)
    assert float(model.loss(batch).detach()) == 0.0
    model = BMAML(hidden=(5,), num_particles=3, leader_steps=2)
    loss = model.loss(batch)
    assert float(loss.detach()) > 0
    named = dict(model.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()))))
    for name in ("particles", "log_sigma", "log_svgd_lr", "log_noise"):
        assert float(grads[name].abs().max()) > 0, name


def test_bfa_loss_is_the_particle_mixtures_log_score(generator):
    """objective="bfa": ``-mean_t mean_n log (1/M sum_m N(y_tn | f_m(x_tn), noise^2))`` over the chaser's particles."""
    model = BMAML(hidden=(5,), num_particles=3, inner_steps=2, svgd_lr=0.1, objective="bfa")
    batch = Sinusoid(noise_std=0.1).sample(3, (2, 4), (3, 5), generator=generator)
    loss = model.loss(batch)
    particles = model.adapt(batch.context_x, batch.context_y, batch.context_mask).detach()  # [T, M, P]
    per_task = []
    for t in range(3):
        m = batch.target_mask[t]
        x, y = batch.target_x[t][m], batch.target_y[t][m]
        lp = torch.stack(
            [
                Normal(model.net(x[None], particles[t, k][None])[0], model.noise_std).log_prob(y).sum(-1)
                for k in range(3)
            ]
        )
        per_task.append(-(torch.logsumexp(lp, 0) - torch.log(torch.tensor(3.0))).mean())
    assert_close(loss.detach(), torch.stack(per_task).mean().detach(), atol=1e-5, what="bfa loss")
    named = dict(model.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()), allow_unused=True)))
    for name in ("particles", "log_sigma", "log_svgd_lr"):  # through the SVGD steps
        assert float(grads[name].abs().max()) > 0, name
    with pytest.raises(ValueError, match="objective must be one of"):
        BMAML(objective="leader")


def test_guide_draws_are_adapted_particles(generator):
    model = BMAML(hidden=(5,), num_particles=3, inner_steps=2)
    batch = Sinusoid().sample(2, 5, 3, generator=generator)
    model.eval()
    particles = model.adapt(batch.context_x, batch.context_y, batch.context_mask).detach()  # [T, M, P]
    post = infer(model, batch, method="amortized", num_samples=40, seed=0)
    draws = post.samples["phi"][0]  # [S, T, P]
    for t in range(2):
        d = ((draws[:, t, None, :] - particles[t]) ** 2).sum(-1)  # [S, M]
        assert float(d.min(-1).values.max()) < 1e-8, "a draw is not one of the task's particles"
        assert len(set(d.argmin(-1).tolist())) == 3, "not every particle was drawn"
    tr = pyro.poutine.trace(model.guide).get_trace(batch)
    assert tr.nodes["particle"]["infer"].get("is_auxiliary")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_particles"):
        BMAML(num_particles=0)
    with pytest.raises(ValueError, match="leader_steps"):
        BMAML(leader_steps=-1)
    with pytest.raises(ValueError, match="svgd_lr"):
        BMAML(svgd_lr=0)
