"""BayesianLinear: the contract, and its closed form checked against an independent computation."""

import torch

from pyro_meta.data import LinearTasks
from pyro_meta.models import BayesianLinear
from pyro_meta.testing import MetaModelContract, assert_close


class TestBayesianLinearContract(MetaModelContract):
    check_unvectorized = True

    def make_model(self):
        return BayesianLinear()

    def make_tasks(self):
        return LinearTasks()


def test_exact_posterior_matches_joint_gaussian_conditioning(generator):
    """p(w | y) from conditioning the joint Gaussian of (w, y) equals the conjugate formula."""
    model = BayesianLinear()
    with torch.no_grad():
        model.mu.copy_(torch.tensor([0.5, -0.2, 0.1, 0.3]))
        model.log_s.copy_(torch.tensor([0.1, -0.3, 0.2, -0.5]))
    batch = LinearTasks().sample(4, (2, 6), 3, generator=generator)
    mean, cov = model.exact_posterior(batch)
    for t in range(4):
        m = batch.context_mask[t]
        phi = model.features(batch.context_x[t][m]).double()
        S0 = torch.diag(model.s.double() ** 2)
        mu = model.mu.double()
        Syy = phi @ S0 @ phi.T + 0.3**2 * torch.eye(phi.shape[0], dtype=torch.double)
        Swy = S0 @ phi.T
        y = batch.context_y[t][m][:, 0].double()
        m_ref = mu + Swy @ torch.linalg.solve(Syy, y - phi @ mu)
        c_ref = S0 - Swy @ torch.linalg.solve(Syy, Swy.T)
        assert_close(mean[t].double(), m_ref, atol=1e-4, what=f"posterior mean task {t}")
        assert_close(cov[t].double(), c_ref, atol=1e-4, what=f"posterior cov task {t}")


def test_fourier_features_option():
    model = BayesianLinear(features="fourier", num_features=6)
    assert model.num_weights == 6
    batch = LinearTasks(features=model.features).sample(2, 3, 4)
    mean, cov = model.exact_posterior(batch)
    assert mean.shape == (2, 6) and cov.shape == (2, 6, 6)
