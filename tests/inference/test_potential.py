"""``TaskPotential`` and ``joint_potential`` against Pyro's own potential (``initialize_model``), task by task."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model

from pyro_meta import MetaModel, observe, task_plate
from pyro_meta.data import Sinusoid
from pyro_meta.inference.common import prepare
from pyro_meta.inference.potential import TaskPotential, joint_potential, problem_inputs


class Constrained(MetaModel):
    """A positive scale ``s [T, 1]`` and a simplex ``w [T, 1, 3]`` per task (unconstrained: 1 + 2 coordinates)."""

    def model(self, batch):
        with task_plate(batch):
            s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
            w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
            observe(batch, lambda x: dist.Normal(w[..., :1] * x + w[..., 1:2] - w[..., 2:], s[..., None]).to_event(1))

    def guide(self, batch):
        with task_plate(batch):
            pyro.sample("s", dist.LogNormal(torch.zeros(batch.num_tasks, 1), 0.1))
            pyro.sample("w", dist.Dirichlet(torch.ones(batch.num_tasks, 1, 3)))


def _batch(T=4, seed=0):
    return Sinusoid(noise_std=0.1).sample(T, (2, 5), 3, generator=torch.Generator().manual_seed(seed))


def _pyro_potential(model, batch):
    """Pyro's potential energy function (sum over the batch's tasks) and its transforms."""
    problem = prepare(model, batch, progress=False)
    _, potential_fn, _, _ = initialize_model(problem.fn, (problem.cond,), max_plate_nesting=2)
    return potential_fn


def test_task_potential_equals_pyros_potential_of_each_task():
    model, batch = Constrained(), _batch()
    problem = prepare(model, batch, progress=False)
    pot = TaskPotential(problem)
    assert pot.num_coords == 1 + 2  # log s, and the stick-breaking coordinates of a 3-simplex
    u = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(1))
    U = pot(u)
    assert U.shape == (3, 4)
    for t in range(4):
        pyro_fn = _pyro_potential(model, batch.select([t]))
        for c in range(3):
            vals = pot.unpack(u[c, t][None])  # {site: [1, *uevent]}
            params = {k: v.unsqueeze(1) for k, v in vals.items()}  # Pyro's shape: [T=1, 1, *uevent]
            expected = pyro_fn(params)
            assert torch.allclose(U[c, t], expected, rtol=1e-5, atol=1e-4), (c, t, float(U[c, t]), float(expected))


def test_pack_unpack_constrain_round_trip():
    model, batch = Constrained(), _batch()
    pot = TaskPotential(prepare(model, batch, progress=False))
    u = torch.randn(2, 4, 3)
    values = pot.unpack(u)
    assert values["s"].shape == (2, 4) and values["w"].shape == (2, 4, 2)
    natural = {k: v.unsqueeze(2) for k, v in values.items()}  # the points singleton, as inits carry it
    assert torch.equal(pot.pack(natural), u)
    z = pot.constrain(u)
    assert z["w"].shape == (2, 4, 3) and torch.allclose(z["w"].sum(-1), torch.ones(2, 4))
    assert torch.allclose(z["s"], u[..., 0].exp())


def test_joint_potential_equals_pyros():
    model, batch = Constrained(), _batch()
    problem = prepare(model, batch, progress=False)
    pyro_fn = _pyro_potential(model, batch)
    g = torch.Generator().manual_seed(2)
    params = {"s": torch.randn(4, 1, generator=g), "w": torch.randn(4, 1, 2, generator=g)}
    ours = joint_potential(problem, params, problem_inputs(problem))
    assert torch.allclose(ours, pyro_fn(params), rtol=1e-5)
    # the batch's tensors are inputs: other data of the same shapes gives that data's potential
    other = _batch(seed=7)
    prob2 = prepare(model, other, progress=False)
    assert torch.allclose(
        joint_potential(problem, params, problem_inputs(prob2)), _pyro_potential(model, other)(params), rtol=1e-5
    )


class Fragile(MetaModel):
    """``y ~ N(sqrt(z + 5) x, 0.1)``: NaN for ``z < -5``; raises ``ValueError`` (a check of its own) when ``|z| > 100``."""

    def model(self, batch):
        with task_plate(batch):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            if bool((z.detach().abs() > 100).any()):
                raise ValueError("z out of the model's range")
            observe(batch, lambda x: dist.Normal((z + 5).sqrt()[..., None] * x, 0.1).to_event(1))

    def guide(self, batch):
        with task_plate(batch):
            pyro.sample("z", dist.Normal(torch.ones(batch.num_tasks, 1), 0.1))


def test_potential_is_inf_not_an_error_outside_the_support():
    model, batch = Fragile(), _batch()
    pot = TaskPotential(prepare(model, batch, progress=False))
    u = torch.tensor([[1.0, -6.0, 2.0, -7.0]]).unsqueeze(-1)  # [C=1, T=4, E=1]
    U = pot(u)
    assert torch.isfinite(U[0, [0, 2]]).all() and torch.isinf(U[0, [1, 3]]).all() and (U > 0).all()
    # the finite ones are unaffected by their neighbours' NaN (per chain-task densities)
    assert torch.allclose(U[0, 0], pot(torch.ones(1, 4, 1))[0, 0])
    u.requires_grad_(True)
    (g,) = torch.autograd.grad(pot(u).clamp(max=1e30).sum(), u)
    assert torch.isfinite(g[0, [0, 2]]).all()
    # a ValueError from the model: every chain-task's potential is +inf (sampling rejects the step) ...
    big = torch.full((1, 4, 1), 200.0)
    assert torch.isinf(pot(big)).all()
    # ... while the strict form raises it
    with pytest.raises(ValueError, match="out of the model's range"):
        pot.log_density(big, pot.inputs)


def test_task_potential_refuses_sampled_globals_and_no_task_sites():
    class Global(MetaModel):
        def model(self, batch):
            tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
            with task_plate(batch):
                z = pyro.sample("z", dist.Normal(0.0, tau))
                observe(batch, lambda x: dist.Normal(z[..., None] * x, 0.1).to_event(1))

        def guide(self, batch):
            pyro.sample("tau", dist.LogNormal(0.0, 0.1))
            with task_plate(batch):
                pyro.sample("z", dist.Normal(torch.zeros(batch.num_tasks, 1), 1.0))

    problem = prepare(Global(), _batch(), globals="sample", progress=False)
    with pytest.raises(ValueError, match="globals='sample'"):
        TaskPotential(problem)
    # with globals held at a point estimate, the fixed value is an input of the potential
    problem = prepare(Global(), _batch(), progress=False)
    pot = TaskPotential(problem)
    assert set(pot.inputs) >= {"batch.context_x", "global.tau"}
    tau = problem.fixed_globals["tau"]
    u = torch.zeros(1, 4, 1)
    lp_prior = dist.Normal(0.0, tau).log_prob(torch.tensor(0.0))
    lp_lik = dist.Normal(0.0, 0.1).log_prob(problem.cond.context_y[..., 0])
    expected = -(lp_prior + (lp_lik * problem.cond.context_mask).sum(-1))
    assert torch.allclose(pot(u)[0], expected, rtol=1e-5)
