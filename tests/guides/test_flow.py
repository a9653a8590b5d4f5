"""``FlowHead``: the identity at initialisation, cached log_prob of its own draws in both directions, an
inverse consistent with the forward pass, and context [T, 1, H] broadcast against draws [S, T, 1, D]."""

import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import AffineAutoregressive, SplineAutoregressive

from pyro_meta.guides import FlowHead


@pytest.mark.parametrize("direction", ["sample", "density"])
@pytest.mark.parametrize("transform", ["spline", "affine"])
@pytest.mark.parametrize("D", [1, 3])
def test_exactly_standard_normal_with_zero_initial_weights(transform, D, direction):
    head = FlowHead(4, D, transform=transform, init_scale=0.0, direction=direction)
    z = 2 * torch.randn(9, 5, 1, D)
    expected = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    # Pyro's spline pins its boundary knot derivatives at 1 - 1e-3: the identity to ~3e-3 nats
    torch.testing.assert_close(head(torch.randn(5, 4)).log_prob(z), expected, atol=5e-3, rtol=0)


@pytest.mark.parametrize("direction", ["sample", "density"])
@pytest.mark.parametrize("transform, layer", [("spline", SplineAutoregressive), ("affine", AffineAutoregressive)])
def test_own_draws_are_scored_without_inverting(transform, layer, direction, monkeypatch):
    """log_prob of a draw reuses the pass that made it; of any other point it runs the other direction."""
    torch.manual_seed(0)
    # float64: a steep spline bin is ill-conditioned to invert in float32
    head = FlowHead(4, 3, transform=transform, direction=direction).double()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    q = head(torch.randn(5, 4, dtype=torch.float64))
    z = q.rsample((6,))

    def refuse(self, y):
        raise AssertionError("inverse called on the flow's own draw")

    with monkeypatch.context() as patch:  # "sample": draws ran the layers forwards; "density": backwards
        patch.setattr(layer, "_inverse" if direction == "sample" else "_call", refuse)
        cached = q.log_prob(z)
    assert cached.shape == (6, 5, 1)
    inverted = q.log_prob(z.clone())  # a new tensor: the cache misses and the layers are inverted
    torch.testing.assert_close(cached, inverted, atol=1e-6, rtol=1e-6)  # the inverse agrees with the forward pass


def test_draws_broadcast_against_the_context():
    torch.manual_seed(1)
    head = FlowHead(4, 2)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    h = torch.randn(5, 4)
    z = torch.randn(7, 5, 1, 2)
    together = head(h).log_prob(z)  # context [5, 1, 4] against values [7, 5, 1, 2]
    one_by_one = torch.stack([head(h).log_prob(z[s]) for s in range(7)])
    task_by_task = torch.stack([head(h[t : t + 1]).log_prob(z[:, t : t + 1])[:, 0] for t in range(5)], 1)
    torch.testing.assert_close(together, one_by_one)
    torch.testing.assert_close(together, task_by_task, atol=1e-5, rtol=1e-5)
