"""Oracles against independent computations: Schur complements, brute-force grids, Monte Carlo."""

import math

import pytest
import torch

from pyro_meta.data import GPCurves, LineOrSine, Sinusoid, TaskBatch
from pyro_meta.oracles import GPOracle, LineOrSineOracle, SinusoidOracle
from pyro_meta.testing import assert_close

D = torch.float64


# ------------------------------------------------------------------------------------- GP
def _hand_kernel(kernel, a, b, ell, s, p):
    r = (a[:, None] - b[None, :]).abs()
    if kernel == "rbf":
        return s**2 * torch.exp(-(r**2) / (2 * ell**2))
    if kernel == "matern52":
        u = math.sqrt(5) * r / ell
        return s**2 * (1 + u + u**2 / 3) * torch.exp(-u)
    return s**2 * torch.exp(-2 * torch.sin(math.pi * r / p) ** 2 / ell**2)


@pytest.mark.parametrize("kernel", ["rbf", "matern52", "periodic"])
def test_gp_oracle_matches_conditioned_joint_gaussian(kernel, generator):
    b = GPCurves(kernel).sample(5, (1, 7), (2, 6), generator=generator)
    oracle = GPOracle()
    mean, var = oracle.predict(b)
    lp, joint = oracle.log_prob(b), oracle.joint_log_prob(b)
    assert mean.shape == var.shape == (5, b.target_x.shape[1], 1) and lp.shape == b.target_mask.shape
    assert bool((lp[~b.target_mask] == 0).all())
    info = b.info
    for t in range(5):
        cm, tm = b.context_mask[t], b.target_mask[t]
        xc, yc = b.context_x[t, cm, 0].to(D), b.context_y[t, cm, 0].to(D)
        xt, yt = b.target_x[t, tm, 0].to(D), b.target_y[t, tm, 0].to(D)
        ell, s, p, sn = (float(info[k][t]) for k in ("lengthscale", "signal_scale", "period", "noise_std"))
        # the joint Gaussian of (context, target) observations, then conditioned by the Schur complement
        x_all = torch.cat([xc, xt])
        joint_cov = _hand_kernel(kernel, x_all, x_all, ell, s, p) + sn**2 * torch.eye(len(x_all), dtype=D)
        nc = len(xc)
        S_cc, S_ct, S_tt = joint_cov[:nc, :nc], joint_cov[:nc, nc:], joint_cov[nc:, nc:]
        cond_mean = S_ct.T @ torch.linalg.solve(S_cc, yc)
        cond_cov = S_tt - S_ct.T @ torch.linalg.solve(S_cc, S_ct)
        assert_close(mean[t, tm, 0].to(D), cond_mean, atol=2e-5, what=f"{kernel} mean task {t}")
        assert_close(var[t, tm, 0].to(D), cond_cov.diagonal(), atol=1e-6, rtol=1e-4, what=f"{kernel} var task {t}")
        point = torch.distributions.Normal(cond_mean, cond_cov.diagonal().sqrt()).log_prob(yt)
        assert_close(lp[t, tm].to(D), point, atol=1e-3, rtol=1e-4, what=f"{kernel} log_prob task {t}")
        mvn = torch.distributions.MultivariateNormal(cond_mean, cond_cov + 1e-10 * torch.eye(len(xt), dtype=D))
        assert float(joint[t]) == pytest.approx(float(mvn.log_prob(yt)), abs=2e-3, rel=1e-4)
        # chain rule: log p(y_t | y_c) = log p(y_c, y_t) - log p(y_c)
        jitter = 1e-10 * torch.eye(len(x_all), dtype=D)
        full = torch.distributions.MultivariateNormal(torch.zeros(len(x_all), dtype=D), joint_cov + jitter)
        ctx = torch.distributions.MultivariateNormal(torch.zeros(nc, dtype=D), S_cc)
        chain = full.log_prob(torch.cat([yc, yt])) - ctx.log_prob(yc)
        assert float(joint[t]) == pytest.approx(float(chain), abs=2e-3, rel=1e-4)


def test_gp_oracle_without_context_is_the_prior(generator):
    b = GPCurves().sample(3, 2, 4, generator=generator)
    empty = b.replace(context_mask=torch.zeros_like(b.context_mask), allow_empty_context=True)
    mean, var = GPOracle().predict(empty)
    tm = b.target_mask
    s, sn = b.info["signal_scale"], b.info["noise_std"]
    assert_close(mean[tm], torch.zeros_like(mean[tm]), atol=1e-7, what="prior mean")
    assert_close(
        var[..., 0], (s**2 + sn**2)[:, None].expand_as(var[..., 0]).masked_fill(~tm, 1.0), rtol=1e-5, what="prior var"
    )


def test_gp_oracle_beats_wrong_hyperparameters_and_is_calibrated(generator):
    b = GPCurves().sample(40, (3, 10), (20, 30), generator=generator)
    oracle = GPOracle()
    nll = -float(oracle.log_prob(b)[b.target_mask].mean())
    wrong = b.replace(info={**b.info, "lengthscale": b.info["lengthscale"] * 3})
    assert nll < -float(oracle.log_prob(wrong)[b.target_mask].mean()) - 0.1
    mean, var = oracle.predict(b)
    # standardized residuals of the true predictive are N(0, 1) at the new target points (about 1000);
    # not at the context points the targets repeat: their y is the observed one, not a fresh draw
    Nc = b.context_x.shape[1]
    z = ((b.target_y - mean) / var.sqrt())[:, Nc:, 0][b.target_mask[:, Nc:]]
    assert abs(float(z.mean())) < 0.15 and abs(float(z.std()) - 1) < 0.1


def test_gp_oracle_samples_match_predictive(generator):
    b = GPCurves().sample(4, 3, 5, generator=generator)
    mean, var = GPOracle().predict(b)
    draws = GPOracle().sample(b, 4000, generator)
    assert draws.shape == (4000,) + tuple(b.target_y.shape)
    tm = b.target_mask
    assert_close(draws.mean(0)[tm], mean[tm], atol=float(5 * (var.max() / 4000) ** 0.5), what="sample mean")
    assert_close(draws.var(0)[tm], var[tm], rtol=0.15, what="sample var")


def test_gp_oracle_needs_hyperparameters():
    b = Sinusoid().sample(2, 3, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="lengthscale"):
        GPOracle().predict(b)
    with pytest.raises(ValueError, match="target_y"):
        GPOracle().log_prob(GPCurves().sample(2, 3, 3).without_target_y())


# ------------------------------------------------------------------------ brute-force grids
def _grid_logw(x, y, f):
    """log-likelihood of context (x, y) on a grid of functions f(x) -> [G, n], up to a constant."""
    return -0.5 * ((y[None, :] - f(x)) ** 2).sum(-1)


def _brute_sine(tasks, n=600):
    lo, hi = tasks.amplitude_range
    A = lo + (hi - lo) * (torch.arange(n, dtype=D) + 0.5) / n
    ph = tasks.phase_range[0] + (tasks.phase_range[1] - tasks.phase_range[0]) * (torch.arange(n, dtype=D) + 0.5) / n
    A, ph = (t.reshape(-1) for t in torch.meshgrid(A, ph, indexing="ij"))
    return lambda x: A[:, None] * torch.sin(x[None, :] - ph[:, None])


def _brute_line(tasks, n=600):
    m = tasks.slope_range[0] + (tasks.slope_range[1] - tasks.slope_range[0]) * (torch.arange(n, dtype=D) + 0.5) / n
    c = (
        tasks.intercept_range[0]
        + (tasks.intercept_range[1] - tasks.intercept_range[0]) * (torch.arange(n, dtype=D) + 0.5) / n
    )
    m, c = (t.reshape(-1) for t in torch.meshgrid(m, c, indexing="ij"))
    return lambda x: m[:, None] * x[None, :] + c[:, None]


def _brute_predictive(families, log_prior, sigma, x, y, xt, yt):
    """Per family: log evidence (up to a shared constant) and log predictive density at (xt, yt)."""
    logws, lps = [], []
    for f, lp0 in zip(families, log_prior):
        lw = _grid_logw(x, y, f) / sigma**2 + lp0  # [G]
        logws.append(lw - math.log(lw.shape[0]))
        ft = f(xt)  # [G, nt]
        lps.append(logws[-1][:, None] - 0.5 * ((yt[None, :] - ft) / sigma) ** 2)
    logw = torch.cat(logws)
    log_pred = torch.logsumexp(torch.cat(lps), 0) - torch.logsumexp(logw, 0) - 0.5 * math.log(2 * math.pi * sigma**2)
    evidence = torch.stack([torch.logsumexp(lw, 0) for lw in logws])
    return evidence, log_pred


@pytest.mark.parametrize("noise_std, num_context", [(0.3, 1), (0.3, 3), (0.1, 2), (0.1, 8)])
def test_sinusoid_oracle_matches_brute_force_2d_grid(noise_std, num_context, generator):
    tasks = Sinusoid(noise_std=noise_std)
    b = tasks.sample(3, num_context, 8, generator=generator)
    oracle = SinusoidOracle(tasks)
    lp = oracle.log_prob(b).to(D)
    mean, var = oracle.predict(b)
    f = _brute_sine(tasks, 500)
    for t in range(3):
        x, y = b.context_x[t, :, 0].to(D), b.context_y[t, :, 0].to(D)
        xt, yt = b.target_x[t, :, 0].to(D), b.target_y[t, :, 0].to(D)
        _, ref = _brute_predictive([f], [0.0], noise_std, x, y, xt, yt)
        assert_close(lp[t], ref, atol=5e-4, what=f"log_prob task {t}")
        # predictive mean from the same grid
        lw = _grid_logw(x, y, f) / noise_std**2
        w = torch.softmax(lw, 0)
        ref_mean = (w[:, None] * f(xt)).sum(0)
        assert_close(mean[t, :, 0].to(D), ref_mean, atol=2e-3, what=f"mean task {t}")


def test_sinusoid_oracle_refined_grid_matches_a_dense_uniform_grid(generator):
    # a narrow posterior (20 points, small noise) takes the refined path; compare with 16384 plain cells
    tasks = Sinusoid(noise_std=0.05)
    b = tasks.sample(4, 20, 10, generator=generator)
    oracle = SinusoidOracle(tasks)
    grids = oracle._grids(b)
    assert bool((torch.isinf(grids[0].logw).sum(-1) > 0).all())  # refined: padded fine grids
    dense = SinusoidOracle(tasks, num_grid=16384, num_fine=2)
    assert_close(oracle.log_prob(b), dense.log_prob(b), atol=1e-4, what="log_prob")
    assert_close(oracle.predict(b)[1], dense.predict(b)[1], rtol=1e-3, what="var")


def test_sinusoid_oracle_matches_importance_sampling_monte_carlo(generator):
    """Independent check: p(y*|C) = E_prior[p(C|A,phase) p(y*|A,phase)] / E_prior[p(C|A,phase)]."""
    sigma = 0.3
    tasks = Sinusoid(noise_std=sigma)
    b = tasks.sample(6, 3, 10, generator=generator)
    oracle_density = SinusoidOracle(tasks).log_prob(b).to(D).exp()
    R, M = 8, 25000  # R independent replicate estimates of M prior draws each
    g = torch.Generator().manual_seed(123)
    for t in range(6):
        x, y = b.context_x[t, :, 0].to(D), b.context_y[t, :, 0].to(D)
        xt, yt = b.target_x[t, :, 0].to(D), b.target_y[t, :, 0].to(D)
        est = []
        for _ in range(R):
            A = 0.1 + 4.9 * torch.rand(M, generator=g, dtype=D)
            ph = math.pi * torch.rand(M, generator=g, dtype=D)
            lik = torch.exp(-0.5 * (((y - A[:, None] * torch.sin(x - ph[:, None])) / sigma) ** 2).sum(-1))
            dens = torch.exp(-0.5 * ((yt - A[:, None] * torch.sin(xt - ph[:, None])) / sigma) ** 2)
            dens = dens / math.sqrt(2 * math.pi * sigma**2)
            est.append((lik[:, None] * dens).sum(0) / lik.sum())
        est = torch.stack(est)  # [R, nt]
        mc, se = est.mean(0), est.std(0) / math.sqrt(R)
        err = (oracle_density[t] - mc).abs()
        assert bool((err <= 5 * se + 1e-3 * mc).all()), f"task {t}: err {err.tolist()} se {se.tolist()}"


def test_sinusoid_oracle_predictive_is_a_normalised_density(generator):
    tasks = Sinusoid(noise_std=0.2)
    b = tasks.sample(1, 1, 1, generator=generator)
    ys = torch.linspace(-7, 7, 2801)
    grid = TaskBatch(b.context_x, b.context_y, torch.full((1, 2801, 1), 2.0), ys.reshape(1, -1, 1))
    dens = SinusoidOracle(tasks).log_prob(grid).to(D).exp()[0]
    assert float(torch.trapezoid(dens, ys.to(D))) == pytest.approx(1.0, abs=1e-4)
    mean, var = SinusoidOracle(tasks).predict(grid)
    m1 = float(torch.trapezoid(dens * ys.to(D), ys.to(D)))
    m2 = float(torch.trapezoid(dens * ys.to(D) ** 2, ys.to(D)))
    assert float(mean[0, 0]) == pytest.approx(m1, abs=1e-3)
    assert float(var[0, 0]) == pytest.approx(m2 - m1**2, abs=1e-3, rel=1e-3)


def test_sinusoid_oracle_beats_naive_predictors(generator):
    sigma = 0.3
    tasks = Sinusoid(noise_std=sigma)
    b = tasks.sample(150, 3, 20, generator=generator)
    oracle = SinusoidOracle(tasks)
    nll = -float(oracle.log_prob(b).mean())
    mean, _ = oracle.predict(b)
    mse = float(((mean - b.target_y) ** 2).mean())
    # naive 1: the moment-matched prior predictive N(0, E[A^2] / 2 + sigma^2)
    var0 = (5.0**3 - 0.1**3) / (3 * 4.9) / 2 + sigma**2
    nll_prior = -float(torch.distributions.Normal(0.0, math.sqrt(var0)).log_prob(b.target_y).mean())
    # naive 2: plug-in maximum likelihood sinusoid (grid search) with the true noise
    A = torch.linspace(0.1, 5.0, 150, dtype=D)[:, None]
    ph = torch.linspace(0.0, math.pi, 150, dtype=D)[None, :]
    plug = []
    for t in range(150):
        x, y = b.context_x[t, :, 0].to(D), b.context_y[t, :, 0].to(D)
        sse = ((y - A[..., None] * torch.sin(x - ph[..., None])) ** 2).sum(-1)  # [150, 150]
        i, j = divmod(int(sse.argmin()), 150)
        plug.append(A[i, 0] * torch.sin(b.target_x[t, :, 0].to(D) - ph[0, j]))
    plug = torch.stack(plug)  # [T, Nt]
    nll_plug = -float(torch.distributions.Normal(plug, sigma).log_prob(b.target_y[..., 0].to(D)).mean())
    mse_plug = float(((plug - b.target_y[..., 0].to(D)) ** 2).mean())
    assert nll < nll_prior - 0.5 and nll < nll_plug - 0.05, (nll, nll_prior, nll_plug)
    assert mse < mse_plug, (mse, mse_plug)
    # the oracle with the wrong noise level is worse
    nll_wrong = -float(SinusoidOracle(Sinusoid(noise_std=0.6)).log_prob(b).mean())
    assert nll < nll_wrong - 0.05


def test_sinusoid_oracle_samples_match_predictive(generator):
    tasks = Sinusoid(noise_std=0.1)
    b = tasks.sample(3, (1, 4), 6, generator=generator)
    oracle = SinusoidOracle(tasks)
    mean, var = oracle.predict(b)
    S = 4000
    draws = oracle.sample(b, S, generator)
    assert draws.shape == (S,) + tuple(b.target_y.shape)
    assert_close(draws.mean(0), mean, atol=float(5 * (var.max() / S) ** 0.5), what="sample mean")
    assert_close(draws.var(0), var, rtol=0.15, atol=0.01, what="sample var")
    # draws are sinusoids of amplitude <= 5 plus noise
    assert float(draws.abs().max()) < 5.0 + 6 * 0.1


def test_sinusoid_oracle_without_context_is_the_prior_predictive(generator):
    # E[y] = E[A] E[sin(x - phase)] = -2.55 * 2 cos(x) / pi; E[y^2] = E[A^2] / 2 + sigma^2
    tasks = Sinusoid(noise_std=0.2)
    b = tasks.sample(2, 2, 7, generator=generator)
    empty = b.replace(context_mask=torch.zeros_like(b.context_mask), allow_empty_context=True)
    mean, var = SinusoidOracle(tasks).predict(empty)
    x = b.target_x.to(D)
    expected_mean = -2.55 * 2 * torch.cos(x) / math.pi
    e_a2 = (5.0**3 - 0.1**3) / (3 * 4.9)
    assert_close(mean.to(D), expected_mean, atol=1e-5, what="prior predictive mean")
    assert_close(var.to(D), e_a2 / 2 + 0.04 - expected_mean**2, atol=1e-4, what="prior predictive var")


@pytest.mark.parametrize(
    "make", [lambda: SinusoidOracle(Sinusoid(noise_std=0.2)), lambda: LineOrSineOracle(LineOrSine())]
)
def test_grid_oracles_ignore_padding(make, generator):
    oracle = make()
    b = oracle.tasks.sample(4, (1, 5), (2, 6), generator=generator)
    lp, (mean, _) = oracle.log_prob(b), oracle.predict(b)
    for t in range(4):
        nc, nt = int(b.context_mask[t].sum()), int(b.target_mask[t].sum())
        alone = TaskBatch(
            b.context_x[t : t + 1, :nc],
            b.context_y[t : t + 1, :nc],
            b.target_x[t : t + 1, :nt],
            b.target_y[t : t + 1, :nt],
        )
        assert_close(lp[t, :nt], oracle.log_prob(alone)[0], atol=1e-5, what=f"log_prob task {t}")
        assert_close(mean[t, :nt], oracle.predict(alone)[0][0], atol=1e-5, what=f"mean task {t}")
        assert bool((lp[t, nt:] == 0).all())


def test_sinusoid_oracle_rejects_noise_free_tasks():
    with pytest.raises(ValueError, match="noise_std"):
        SinusoidOracle(Sinusoid())
    with pytest.raises(TypeError, match="Sinusoid"):
        SinusoidOracle(LineOrSine())


def test_oracle_calls_are_fast_enough(generator):
    import time

    tasks = LineOrSine()
    b = tasks.sample(50, 2, 50, generator=generator)
    oracle = LineOrSineOracle(tasks)
    start = time.perf_counter()
    oracle.log_prob(b)
    oracle.predict(b)
    # about 1 s on one idle core; generous for a shared machine
    assert time.perf_counter() - start < 10.0


# ----------------------------------------------------------------------------- line or sine
@pytest.mark.parametrize("num_context", [1, 2, 5])
def test_line_or_sine_oracle_matches_brute_force(num_context, generator):
    tasks = LineOrSine(noise_std=0.2)
    b = tasks.sample(3, num_context, 6, generator=generator)
    oracle = LineOrSineOracle(tasks)
    lp = oracle.log_prob(b).to(D)
    p_sine = oracle.sine_probability(b).to(D)
    fams = [_brute_sine(tasks, 400), _brute_line(tasks, 400)]
    for t in range(3):
        x, y = b.context_x[t, :, 0].to(D), b.context_y[t, :, 0].to(D)
        xt, yt = b.target_x[t, :, 0].to(D), b.target_y[t, :, 0].to(D)
        ev, ref = _brute_predictive(fams, [math.log(0.5)] * 2, 0.2, x, y, xt, yt)
        assert_close(lp[t], ref, atol=1e-3, what=f"log_prob task {t}")
        assert float(p_sine[t]) == pytest.approx(float(torch.softmax(ev, 0)[0]), abs=2e-3)


def test_line_or_sine_posterior_family_probability_is_calibrated(generator):
    # for data from the prior, sum_t (P(sine | C_t) - 1[sine_t]) has mean 0 and variance sum_t p (1 - p)
    tasks = LineOrSine()
    b = tasks.sample(300, (1, 3), 1, generator=generator)
    p = LineOrSineOracle(tasks).sine_probability(b).to(D)
    s = b.info["is_sine"].to(D)
    z = float((p - s).sum() / (p * (1 - p)).sum().sqrt())
    assert abs(z) < 4, z
    # the posterior is informative: it beats the prior's 0.25 Brier score
    assert float(((p - s) ** 2).mean()) < 0.2
    # with many context points the family is nearly always identified
    b = tasks.sample(60, 20, 1, generator=generator)
    p = LineOrSineOracle(tasks).sine_probability(b)
    assert float(((p > 0.5) == b.info["is_sine"]).float().mean()) > 0.95


def test_line_or_sine_predictive_is_bimodal_when_ambiguous():
    # two points on the line y = 0.5 x, which the sinusoid y = A sin(x - phase) also fits
    tasks = LineOrSine(noise_std=0.1)
    cx = torch.tensor([[[-1.0], [1.0]]])
    cy = 0.5 * cx
    oracle = LineOrSineOracle(tasks)
    p = float(oracle.sine_probability(TaskBatch(cx, cy, cx[:, :0])))
    assert 0.05 < p < 0.95, p
    ys = torch.linspace(-6, 6, 1201)
    grid = TaskBatch(cx, cy, torch.full((1, 1201, 1), 4.5), ys.reshape(1, -1, 1))
    dens = oracle.log_prob(grid)[0].exp()
    # the line predicts 2.25 +- 0.1ish; the sines elsewhere: at least two separated local maxima
    peaks = [i for i in range(1, 1200) if dens[i] > dens[i - 1] and dens[i] >= dens[i + 1] and dens[i] > 0.02]
    assert len(peaks) >= 2 and float(ys[peaks[-1]] - ys[peaks[0]]) > 1.0, [float(ys[i]) for i in peaks]
    assert float(torch.trapezoid(dens.to(D), ys.to(D))) == pytest.approx(1.0, abs=1e-3)


def test_line_or_sine_samples_match_predictive(generator):
    tasks = LineOrSine()
    b = tasks.sample(3, (1, 3), 5, generator=generator)
    oracle = LineOrSineOracle(tasks)
    mean, var = oracle.predict(b)
    S = 4000
    draws = oracle.sample(b, S, generator)
    assert_close(draws.mean(0), mean, atol=float(5 * (var.max() / S) ** 0.5), what="sample mean")
    assert_close(draws.var(0), var, rtol=0.15, atol=0.01, what="sample var")


def test_line_or_sine_oracle_argument_checks():
    with pytest.raises(ValueError, match="noise_std"):
        LineOrSineOracle(LineOrSine(noise_std=0.0))
    with pytest.raises(TypeError, match="LineOrSine"):
        LineOrSineOracle(Sinusoid(noise_std=0.1))
    b = LineOrSine().sample(2, 2, 2)
    with pytest.raises(ValueError, match="target_y"):
        LineOrSineOracle(LineOrSine()).log_prob(b.without_target_y())


def test_truncated_normal_moments_in_every_regime():
    from pyro_meta.oracles.truncnorm import truncnorm_moments as _truncnorm_moments

    lo, hi = 0.1, 5.0
    cases = [(2.0, 0.5), (7.0, 0.3), (-50.0, 10.0), (0.0, 2e5), (3.0, 1e-3), (6.0, 1.5), (1e4, 1e3)]
    mu = torch.tensor([c[0] for c in cases], dtype=D)
    tau = torch.tensor([c[1] for c in cases], dtype=D)
    mean, var = _truncnorm_moments(mu, tau, lo, hi)
    c = torch.linspace(lo, hi, 400001, dtype=D)
    for i, (m, t) in enumerate(cases):
        logf = -0.5 * ((c - m) / t) ** 2
        f = torch.exp(logf - logf.max())
        z = torch.trapezoid(f, c)
        m1 = torch.trapezoid(f * c, c) / z
        v = torch.trapezoid(f * (c - m1) ** 2, c) / z
        assert float(mean[i]) == pytest.approx(float(m1), abs=1e-6), cases[i]
        assert float(var[i]) == pytest.approx(float(v), rel=1e-4, abs=1e-9), cases[i]


def test_the_oracle_protocol_takes_users_oracles_and_names_what_is_missing():
    from pyro_meta.oracles import GPOracle, Oracle, check_oracle

    assert isinstance(GPOracle(), Oracle)

    class HalfAnOracle:
        def log_prob(self, batch):
            return batch.target_mask.float()

    assert not isinstance(HalfAnOracle(), Oracle)
    with pytest.raises(TypeError, match="predict, sample"):
        check_oracle(HalfAnOracle())
    import pyro_meta
    from pyro_meta.data import GPCurves

    with pytest.raises(TypeError, match="HalfAnOracle has no predict"):
        pyro_meta.evaluate(None, GPCurves(), oracle=HalfAnOracle(), num_tasks=2, num_context=2, num_target=2)
