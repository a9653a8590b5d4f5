"""Guide objectives on the conjugate ``BayesianLinear`` (exact evidence, ELBO and posterior in closed form):
IWAE bounds, reweighted wake-sleep and sleep training of the guide, and where the gradients go."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_meta
from pyro_meta.data import LinearTasks, Sinusoid
from pyro_meta.inference.objectives import guide_parameters, iwae_loss, model_parameters, rws_wake_loss, sleep_loss
from pyro_meta.models import BayesianLinear, NeuralProcess

MU = torch.tensor([0.5, -0.5, 0.3, 0.2])
S = torch.tensor([1.0, 0.7, 0.5, 0.3])
TASKS = LinearTasks(weight_mean=MU, weight_scale=S)  # the model's own prior: data ~ model


def _model(guide_off: bool = True) -> BayesianLinear:
    """The model at (MU, S, noise 0.3); the guide's conjugate update off the model's (q != posterior)."""
    model = BayesianLinear()
    with torch.no_grad():
        model.mu.copy_(MU)
        model.log_s.copy_(S.log())
        if guide_off:
            model.q_mu.fill_(0.3)
            model.q_log_s.fill_(-0.5)
            model.q_log_noise.fill_(math.log(0.5))
    return model


def _batch(T=16, Nc=5, Nt=5, seed=0):
    return TASKS.sample(num_tasks=T, num_context=Nc, num_target=Nt, generator=torch.Generator().manual_seed(seed))


def _guide_gaussian(model, batch):
    """The guide's ``q(w_t | observed)``: ``(mean [T, K], cov [T, K, K])``."""
    with torch.no_grad():
        q = pyro.poutine.trace(model.guide).get_trace(batch).nodes["w"]["fn"]
    return q.mean[:, 0], q.covariance_matrix[:, 0]


def _exact_log_evidence(model, batch):
    """``log p(y_t)`` of every observed point: ``N(y; Phi mu, Phi diag(s^2) Phi^T + sigma^2 I)``, ``[T]``."""
    x, y, _ = batch.observed()
    phi = model.features(x)
    cov = phi @ torch.diag(S**2) @ phi.transpose(-1, -2) + 0.09 * torch.eye(phi.shape[1])
    return dist.MultivariateNormal(phi @ MU, cov).log_prob(y[..., 0])


def _exact_elbo(model, batch):
    """``E_q[log p(y, w) - log q(w)]`` in closed form for the guide's Gaussian ``q = N(m, C)``, ``[T]``."""
    m, C = _guide_gaussian(model, batch)
    x, y, _ = batch.observed()
    phi = model.features(x)
    fit = dist.Normal(phi @ m[..., None], 0.3).log_prob(y).sum((-1, -2))
    fit = fit - torch.einsum("tnk,tkl,tnl->t", phi, C, phi) / (2 * 0.09)
    prior = dist.Normal(MU, S).log_prob(m).sum(-1) - 0.5 * (torch.diagonal(C, dim1=-2, dim2=-1) / S**2).sum(-1)
    entropy = dist.MultivariateNormal(m, C).entropy()
    return fit + prior + entropy


def _by_hand(model, batch, K, seed):
    """Draws of the guide (the same seed as the objective), log q from the guide's own distribution and
    log p(y, w) written out: ``(log p [K, T], log q [K, T])`` with no pyro_meta machinery."""
    pyro.set_rng_seed(seed)
    with pyro.plate("_draws", K, dim=-3):
        trace = pyro.poutine.trace(model.guide).get_trace(batch)
    w = trace.nodes["w"]["value"]  # [K, T, 1, 4]
    log_q = trace.nodes["w"]["fn"].log_prob(w)[..., 0]
    x, y, _ = batch.observed()
    mean = (model.features(x) * w).sum(-1, keepdim=True)  # [K, T, N, 1]
    log_p = dist.Normal(MU, S).log_prob(w).sum(-1)[..., 0] + dist.Normal(mean, 0.3).log_prob(y).sum((-1, -2))
    return log_p, log_q


def test_losses_equal_the_weights_written_out():
    model, batch = _model(), _batch(T=6)
    log_p, log_q = _by_hand(model, batch, 5, seed=3)
    logw = log_p - log_q
    pyro.set_rng_seed(3)
    iwae = iwae_loss(model, batch, 5)
    torch.testing.assert_close(iwae, -(logw.logsumexp(0) - math.log(5)).mean())
    pyro.set_rng_seed(3)
    rws = rws_wake_loss(model, batch, 5)
    torch.testing.assert_close(rws, -(torch.softmax(logw, 0) * log_q).sum(0).mean())


def test_iwae_with_one_particle_is_the_elbo():
    model, batch = _model(), _batch(T=32)
    values = torch.stack([-iwae_loss(model, batch, 1).detach() for _ in range(100)])
    se = values.std() / math.sqrt(len(values))
    assert abs(values.mean() - _exact_elbo(model, batch).mean()) < 4 * se, (
        values.mean(),
        _exact_elbo(model, batch).mean(),
        se,
    )


def test_iwae_bound_rises_to_the_exact_log_evidence():
    """E[L_1] (the ELBO) < E[L_10] < E[L_100] < E[L_1000] <= log p(y), and L_1000 within 0.02 nats of log p(y)."""
    model, batch = _model(), _batch(T=16)
    log_z = float(_exact_log_evidence(model, batch).mean())
    elbo = float(_exact_elbo(model, batch).mean())
    means, ses = [], []
    for K, repeats in ((10, 40), (100, 20), (1000, 10)):
        values = torch.stack([-iwae_loss(model, batch, K).detach() for _ in range(repeats)])
        means.append(float(values.mean()))
        ses.append(float(values.std()) / math.sqrt(repeats))
    assert log_z - elbo > 2.0  # the guide is off: the ELBO's gap is large
    bounds = [elbo] + means
    for lower, upper in zip(bounds[:-1], bounds[1:]):
        assert lower < upper, bounds
    for m, se in zip(means, ses):
        assert m <= log_z + 3 * se + 1e-3, (m, log_z, se)
    assert log_z - means[-1] < 0.02, (means, log_z)


def _train(objective, K, steps=150, lr=0.05, seed=0):
    """Train only the guide's parameters by ``objective`` on fresh tasks from the model's prior; the model is fixed."""
    pyro.set_rng_seed(seed)
    model = _model()
    probe = _batch(T=2, Nc=2, Nt=0)
    params = guide_parameters(model, probe)
    fixed = [p.detach().clone() for p in model_parameters(model, probe)]
    opt = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - 0.95 * i / steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = objective(model, TASKS.sample(32, 5, 5, generator=gen), K)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    for p, p0 in zip(model_parameters(model, probe), fixed):
        assert torch.equal(p, p0)
    return model


def _posterior_errors(model):
    test = _batch(T=8, Nc=3, Nt=0, seed=99).context_only()
    exact_mean, exact_cov = model.exact_posterior(test)
    mean, cov = _guide_gaussian(model, test)
    return float((mean - exact_mean).abs().max()), float((cov - exact_cov).abs().max() / exact_cov.abs().max())


def test_untrained_guide_is_far_from_the_posterior():
    mean_err, cov_err = _posterior_errors(_model())
    assert mean_err > 0.5 and cov_err > 0.5, (mean_err, cov_err)


def test_sleep_trained_guide_recovers_the_exact_posterior():
    mean_err, cov_err = _posterior_errors(_train(sleep_loss, K=8))
    assert mean_err < 0.06 and cov_err < 0.06, (mean_err, cov_err)


def test_rws_wake_trained_guide_recovers_the_exact_posterior():
    mean_err, cov_err = _posterior_errors(_train(rws_wake_loss, K=16))
    assert mean_err < 0.06 and cov_err < 0.06, (mean_err, cov_err)


def _grads(loss, model):
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {n: g for n, g in zip(names, grads) if g is not None and bool(g.abs().sum() > 0)}


def test_gradients_reach_the_parameters_they_should():
    model, batch = _model(), _batch(T=6)
    guide = {"q_mu", "q_log_s", "q_log_noise"}
    assert {n for n, p in model.named_parameters() if any(p is q for q in guide_parameters(model, batch))} == guide
    assert {n for n, p in model.named_parameters() if any(p is q for q in model_parameters(model, batch))} == {
        "mu",
        "log_s",
    }
    assert set(_grads(iwae_loss(model, batch, 4), model)) == guide | {"mu", "log_s"}  # IWAE trains both
    assert set(_grads(rws_wake_loss(model, batch, 4), model)) == guide  # wake and sleep: the guide only
    assert set(_grads(sleep_loss(model, batch, 4), model)) == guide
    for g in _grads(rws_wake_loss(model, batch, 4), model).values():
        assert torch.isfinite(g).all()


def test_neural_process_parameters_split_into_encoder_and_decoder():
    model = NeuralProcess(latent_dim=3, hidden=8, deterministic_path=True)
    batch = Sinusoid().sample(4, 3, 5, generator=torch.Generator().manual_seed(0))
    guide = {
        n.split(".")[0] for n, p in model.named_parameters() if any(p is q for q in guide_parameters(model, batch))
    }
    used = {n.split(".")[0] for n, p in model.named_parameters() if any(p is q for q in model_parameters(model, batch))}
    assert guide == {"latent_encoder", "latent_head"} and used == {"det_encoder", "decoder"}
    for objective in (iwae_loss, rws_wake_loss, sleep_loss):
        assert torch.isfinite(objective(model, batch, 3))


class _Shared(pyro_meta.MetaModel):
    """A parameter ``a`` used by both the model (prior mean) and the guide (its mean)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))
        self.b = nn.Parameter(torch.tensor(0.0))  # guide only
        self.c = nn.Parameter(torch.tensor(1.0))  # model only

    def model(self, batch):
        with pyro_meta.task_plate(batch):
            z = pyro.sample("z", dist.Normal(self.a, 1.0).expand([1]).to_event(1))
            pyro_meta.observe(batch, lambda x: dist.Normal(self.c * z * x, 0.5).to_event(1))

    def guide(self, batch):
        with pyro_meta.task_plate(batch):
            pyro.sample("z", dist.Normal((self.a + self.b).expand(batch.num_tasks, 1, 1), 1.0).to_event(1))


def test_shared_parameters_are_in_both_lists():
    model, batch = _Shared(), Sinusoid().sample(3, 2, 2, generator=torch.Generator().manual_seed(0))
    assert [p for p in guide_parameters(model, batch)] == [model.a, model.b]
    assert [p for p in model_parameters(model, batch)] == [model.a, model.c]
    assert set(_grads(rws_wake_loss(model, batch, 4), model)) == {"a", "b"}


def test_non_vectorized_models_loop_over_particles():
    model, batch = _model(), _batch(T=4)
    model.vectorized = False
    bound = -iwae_loss(model, batch, 64).detach()
    log_z = _exact_log_evidence(model, batch).mean()
    assert log_z - 0.15 < bound < log_z + 0.05, (bound, log_z)
    assert torch.isfinite(rws_wake_loss(model, batch, 3)) and torch.isfinite(sleep_loss(model, batch, 3))
    assert set(_grads(sleep_loss(model, batch, 3), model)) == {"q_mu", "q_log_s", "q_log_noise"}


class _Discrete(pyro_meta.MetaModel):
    """A Poisson task latent: not reparameterisable."""

    def __init__(self):
        super().__init__()
        self.log_rate = nn.Parameter(torch.tensor(0.0))

    def model(self, batch):
        with pyro_meta.task_plate(batch):
            k = pyro.sample("k", dist.Poisson(torch.tensor([3.0])).to_event(1))
            pyro_meta.observe(batch, lambda x: dist.Normal(k * x, 1.0).to_event(1))

    def guide(self, batch):
        with pyro_meta.task_plate(batch):
            pyro.sample("k", dist.Poisson(self.log_rate.exp().expand(batch.num_tasks, 1, 1)).to_event(1))


class _Global(BayesianLinear):
    def model(self, batch):
        pyro.sample("g", dist.Normal(0.0, 1.0))
        super().model(batch)


def test_refusals():
    model, batch = _model(), _batch(T=3)
    for objective in (iwae_loss, rws_wake_loss, sleep_loss):
        for bad in (0, -1, 2.0, True):
            with pytest.raises(ValueError, match="num_particles"):
                objective(model, batch, bad)
        with pytest.raises(TypeError, match="batch"):
            objective(model, "batch", 2)
        with pytest.raises(TypeError, match="model"):
            objective(nn.Linear(2, 2), batch, 2)
    discrete = _Discrete()
    small = Sinusoid().sample(3, 2, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not reparameterised"):
        iwae_loss(discrete, small, 4)
    assert set(_grads(rws_wake_loss(discrete, small, 4), discrete)) == {"log_rate"}  # no reparameterisation needed
    with pytest.raises(ValueError, match="latent sites \\['g'\\]"):
        iwae_loss(_Global(), batch, 2)
