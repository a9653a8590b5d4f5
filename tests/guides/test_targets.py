"""``BimodalTarget`` and the forward-KL (maximum likelihood) fit of each head to it: the mixture and the
flow capture both modes (mode mass within 0.1), the diagonal Normal cannot."""

import pytest
import torch

from pyro_meta.guides import BimodalTarget, FlowHead, FullNormalHead, LowRankNormalHead, MixtureHead, NormalHead

TARGET = BimodalTarget(latent_dim=2, separation=2.0, scale=0.4)
CONTEXTS = torch.linspace(-0.9, 0.9, 7)[:, None]  # h [7, 1]


def test_mode_masses_of_the_target_itself():
    z = TARGET.sample(CONTEXTS, 20000, generator=torch.Generator().manual_seed(0))
    assert z.shape == (20000, 7, 1, 2)
    torch.testing.assert_close(TARGET.mode_masses(CONTEXTS, z), TARGET.exact_mode_masses(CONTEXTS), atol=0.015, rtol=0)
    # log_prob is a normalised density: importance estimate of its integral with a wide Gaussian proposal
    proposal = torch.distributions.Normal(0.0, 3.0)
    u = proposal.sample((200000, 7, 1, 2))
    mass = (TARGET.log_prob(CONTEXTS, u) - proposal.log_prob(u).sum(-1)).exp().mean(0)
    torch.testing.assert_close(mass, torch.ones(7, 1), atol=0.03, rtol=0)


def _fit_forward_kl(head, steps, lr, batch=128, seed=0):
    """Maximum likelihood on fresh target draws: minimises E_c KL(p(z | c) || q(z | c)) up to a constant."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        h, z = TARGET.sample_pairs(batch, gen)
        loss = -head(h).log_prob(z).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        masses = TARGET.mode_masses(CONTEXTS, head(CONTEXTS).sample((4000,)))
        error = (masses - TARGET.exact_mode_masses(CONTEXTS)).abs().max().item()
        h, z = TARGET.sample_pairs(4000, torch.Generator().manual_seed(1))
        kl = (TARGET.log_prob(h, z) - head(h).log_prob(z)).mean().item()  # forward KL, Monte Carlo
    return error, kl


@pytest.mark.parametrize(
    "make",
    [
        lambda: NormalHead(1, 2, hidden=(32,)),
        lambda: LowRankNormalHead(1, 2, rank=1, hidden=(32,)),
        lambda: FullNormalHead(1, 2, hidden=(32,)),
    ],
    ids=["normal", "lowrank", "full"],
)
def test_gaussian_heads_cannot_capture_both_modes(make):
    """The same fit, the same metric: a Gaussian puts its mass between the modes (the metric can fail)."""
    torch.manual_seed(0)
    error, kl = _fit_forward_kl(make(), steps=400, lr=1e-2)
    assert error > 0.3 and kl > 0.5, (error, kl)


def test_mixture_head_captures_both_modes():
    torch.manual_seed(0)
    error, kl = _fit_forward_kl(MixtureHead(1, 2, num_components=2, hidden=(32,)), steps=500, lr=1e-2)
    assert error < 0.1 and kl < 0.1, (error, kl)


@pytest.mark.slow
def test_flow_head_captures_both_modes():
    torch.manual_seed(0)
    head = FlowHead(1, 2, num_layers=1, flow_hidden=(16, 16), hidden=(32,))
    error, kl = _fit_forward_kl(head, steps=600, lr=2e-2)
    assert error < 0.1 and kl < 0.2, (error, kl)


def test_bad_target_arguments():
    with pytest.raises(ValueError, match="latent_dim"):
        BimodalTarget(latent_dim=1)
    with pytest.raises(ValueError, match="separation"):
        BimodalTarget(scale=0.0)
