"""Every head: task-plate shapes (plain, draws plate), a normalised log_prob that matches its samples,
near N(0, I) at initialisation, exact rsample gradients (finite differences), argument checks, and use
inside a MetaModel guide (ELBO, amortized inference, the guide objectives)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_meta
from pyro_meta.data import Sinusoid
from pyro_meta.guides import FlowHead, FullNormalHead, LowRankNormalHead, MixtureHead, NormalHead
from pyro_meta.inference.draws import DRAW_PLATE
from pyro_meta.inference.objectives import iwae_loss, rws_wake_loss, sleep_loss

HEADS = {
    "normal": lambda H, D: NormalHead(H, D),
    "lowrank": lambda H, D: LowRankNormalHead(H, D, rank=2),
    "full": lambda H, D: FullNormalHead(H, D),
    "mixture": lambda H, D: MixtureHead(H, D, num_components=3),
    "flow_spline": lambda H, D: FlowHead(H, D, num_layers=2, flow_hidden=(8, 8)),
    "flow_affine": lambda H, D: FlowHead(H, D, num_layers=2, transform="affine", flow_hidden=(8, 8)),
    "flow_density": lambda H, D: FlowHead(H, D, num_layers=2, flow_hidden=(8, 8), direction="density"),
}
T, H, S = 3, 5, 7


def _perturb(head: nn.Module, scale: float = 0.3) -> nn.Module:
    """Move every parameter off its initialisation, so that the head is not (near) N(0, I)."""
    with torch.no_grad():
        for p in head.parameters():
            p.add_(scale * torch.randn_like(p))
    return head


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("D", [1, 3])
def test_shapes_plain_task_plate_and_draws_plate(name, D):
    head = HEADS[name](H, D)
    h = torch.randn(T, H)
    q = head(h)
    assert q.batch_shape == (T, 1) and q.event_shape == (D,)
    assert q.rsample().shape == (T, 1, D) and q.rsample((S,)).shape == (S, T, 1, D)

    def guide(draws):
        with pyro.plate(DRAW_PLATE, draws, dim=-3), pyro.plate("tasks", T, dim=-2):
            return pyro.sample("z", head(h))

    for draws, shape in ((1, (1, T, 1, D)), (S, (S, T, 1, D))):
        trace = pyro.poutine.trace(guide).get_trace(draws)
        trace.compute_log_prob()
        site = trace.nodes["z"]
        assert site["value"].shape == shape and site["log_prob"].shape == shape[:-1]
        # the plate-expanded distribution scores like the head's own distribution
        torch.testing.assert_close(site["log_prob"], head(h).log_prob(site["value"]), rtol=1e-5, atol=1e-5)
    value = trace.nodes["z"]["value"]
    (value.sum() + trace.nodes["z"]["log_prob"].sum()).backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("D", [1, 2])
def test_log_prob_is_normalised_and_describes_the_samples(name, D):
    """Grid integral of exp(log_prob) is 1; the grid mean equals the sample mean (same distribution)."""
    torch.manual_seed(1)
    head = _perturb(HEADS[name](H, D))
    h = torch.randn(2, H)
    with torch.no_grad():
        q = head(h)
        z = q.sample((10000,))  # [N, 2, 1, D]
        mean, sd = z.mean(0)[:, 0], z.std(0)[:, 0]  # [2, D]
        n = 4000 if D == 1 else 300
        for t in range(2):
            axes = [torch.linspace(float(m - 8 * s), float(m + 8 * s), n) for m, s in zip(mean[t], sd[t])]
            grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, D)  # [G, D]
            cell = math.prod(float(a[1] - a[0]) for a in axes)
            value = grid[:, None, None, :].expand(-1, 2, 1, D)
            density = q.log_prob(value)[:, t, 0].exp()  # [G]
            mass = float(density.sum() * cell)
            assert abs(mass - 1.0) < 0.01, (name, D, t, mass)
            grid_mean = (density[:, None] * grid).sum(0) * cell / mass
            tol = 5 * sd[t] / math.sqrt(z.shape[0]) + 1e-3
            assert ((grid_mean - mean[t]).abs() < tol).all(), (name, D, t, grid_mean, mean[t])


@pytest.mark.parametrize("name", sorted(HEADS))
def test_near_standard_normal_at_initialisation(name):
    torch.manual_seed(2)
    D = 3
    q = HEADS[name](H, D)(torch.randn(4, H))
    with torch.no_grad():
        z = q.sample((5000,)).reshape(-1, 4, D)
        ref = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        kl = (q.log_prob(z[:, :, None]).squeeze(-1) - ref).mean(0)  # KL(q || N(0, I)) per task, Monte Carlo
    assert (z.mean(0).abs() < 0.1).all(), z.mean(0)
    assert (kl.abs() < 0.05).all(), kl


def _finite_difference_check(name: str) -> None:
    torch.manual_seed(3)
    head = _perturb(HEADS[name](H, 2)).double()
    h = torch.randn(T, H, dtype=torch.float64)
    weights = torch.randn(5, T, 1, 2, dtype=torch.float64)
    params = list(head.parameters())

    def f() -> torch.Tensor:
        pyro.set_rng_seed(7)  # the same base noise: z(theta) = transform_theta(eps)
        return (head(h).rsample((5,)) * weights).sum()

    grads = torch.autograd.grad(f(), params)
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for p, g in zip(params, grads):
        for i in torch.randperm(p.numel(), generator=gen)[:3].tolist():
            with torch.no_grad():
                old = p.view(-1)[i].item()
                p.view(-1)[i] = old + 1e-6
                up = f()
                p.view(-1)[i] = old - 1e-6
                down = f()
                p.view(-1)[i] = old
            fd = float((up - down) / 2e-6)
            assert abs(fd - float(g.view(-1)[i])) < 1e-5 * (1 + abs(fd)), (name, fd, float(g.view(-1)[i]))
            checked += 1
    assert checked >= 6


@pytest.mark.parametrize("name", ["normal", "lowrank", "full", "flow_spline", "flow_affine", "flow_density"])
def test_rsample_gradient_matches_finite_differences(name):
    """Reparameterised heads: with the base noise fixed, d z / d theta is the derivative of the sample path.

    (The mixture's path is the Rosenblatt transport, not fixed noise: tested in test_mixture.py.)
    """
    _finite_difference_check(name)


@pytest.mark.parametrize(
    "bad, error",
    [
        ([[0.0] * H], TypeError),
        (torch.zeros(T, H, dtype=torch.long), TypeError),
        (torch.zeros(T, H + 1), ValueError),
        (torch.zeros(H), ValueError),
        (torch.zeros(0, H), ValueError),
        (torch.full((T, H), float("nan")), ValueError),
    ],
)
@pytest.mark.parametrize("name", sorted(HEADS))
def test_bad_embeddings_are_refused(name, bad, error):
    with pytest.raises(error, match=r"h "):
        HEADS[name](H, 2)(bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: NormalHead(0, 2),
        lambda: NormalHead(3, 2, min_scale=1.5),
        lambda: LowRankNormalHead(3, 2, rank=0),
        lambda: LowRankNormalHead(3, 2, rank=4, factor_init=0.6),
        lambda: MixtureHead(3, 2, num_components=0),
        lambda: MixtureHead(3, 2, init_spread=1.0),
        lambda: FlowHead(3, 2, transform="planar"),
        lambda: FlowHead(3, 4, flow_hidden=(2,)),
        lambda: FlowHead(3, 2, count_bins=1),
        lambda: FlowHead(3, 2, direction="both"),
        lambda: NormalHead(3, 2, hidden=(0,)),
    ],
)
def test_bad_constructor_arguments_are_refused(make):
    with pytest.raises(ValueError):
        make()


class _TinyModel(pyro_meta.MetaModel):
    """z_t ~ N(0, I_2); y ~ N(w . z_t x, 0.1^2); guide: a set encoder then any head."""

    def __init__(self, head):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 0.5]))
        self.encoder = nn.Linear(2, 8)
        self.head = head

    def model(self, batch):
        with pyro_meta.task_plate(batch):
            z = pyro.sample("z", dist.Normal(batch.context_x.new_zeros(2), 1.0).to_event(1))
            pyro_meta.observe(batch, lambda x: dist.Normal((z * self.w).sum(-1, keepdim=True) * x, 0.1).to_event(1))

    def guide(self, batch):
        x, y, mask = batch.observed()
        m = mask[..., None].to(x.dtype)
        h = (self.encoder(torch.cat([x, y], -1)) * m).sum(1) / m.sum(1)
        with pyro_meta.task_plate(batch):
            pyro.sample("z", self.head(h))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_heads_in_a_meta_model_guide(name):
    """ELBO (Trace_ELBO over the guide's own draws), a fit step, amortized draws [C, S, T, D], the objectives."""
    model = _TinyModel(HEADS[name](8, 2))
    batch = Sinusoid().sample(4, 3, 5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model.loss(batch))
    result = pyro_meta.fit(model, batch, num_steps=2, tasks_per_batch=4, lr=1e-2, seed=0, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    post = pyro_meta.infer(model, batch, method="amortized", num_samples=6, seed=0)
    assert post.samples["z"].shape == (1, 6, 4, 2)
    for objective in (iwae_loss, rws_wake_loss, sleep_loss):  # the mode-covering objectives take every head
        loss = objective(model, batch, 4)
        grads = torch.autograd.grad(loss, list(model.head.parameters()), allow_unused=True)
        assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads), objective
