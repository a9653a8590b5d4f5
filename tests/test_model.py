"""MetaModel, plates, masks, site discovery and per-instance parameter isolation."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

import pyro_meta
from pyro_meta.data import Sinusoid, TaskBatch
from pyro_meta.model import global_latent_sites


class TinyNP(pyro_meta.MetaModel):
    """A two-dimensional latent with a PyroModule decoder: the classic param-store clash setup."""

    def __init__(self):
        super().__init__()
        self.decoder = PyroModule[nn.Linear](3, 1)
        self.encoder = PyroModule[nn.Linear](2, 4)

    def model(self, batch):
        with pyro_meta.task_plate(batch):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

            def likelihood(x):
                zx = torch.cat(
                    torch.broadcast_tensors(z, x.new_zeros(x.shape[:-1] + (2,)))[:1]
                    + (x.expand(z.shape[:-3] + x.shape),),
                    -1,
                )
                return dist.Normal(self.decoder(zx), 0.1).to_event(1)

            pyro_meta.observe(batch, likelihood)

    def guide(self, batch):
        x, y, m = batch.observed()
        h = (self.encoder(torch.cat([x, y], -1)) * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        with pyro_meta.task_plate(batch):
            pyro.sample("z", dist.Normal(h[:, None, :2], h[:, None, 2:].exp()).to_event(1))


def batch(T=3, seed=0):
    return Sinusoid(noise_std=0.1).sample(T, (2, 4), 5, generator=torch.Generator().manual_seed(seed))


def test_task_plate_shapes_and_site_discovery():
    m, b = TinyNP(), batch()
    tr = poutine.trace(m.model).get_trace(b)
    assert tr.nodes["z"]["value"].shape == (3, 1, 2)
    assert tr.nodes["y_context"]["value"].shape == (3, 4, 1)
    sites = pyro_meta.task_latent_sites(m, b)
    assert list(sites) == ["z"] and tuple(sites["z"].event_shape) == (2,)
    assert global_latent_sites(m, b) == ()


def test_observe_skips_empty_target_and_samples_unknown_target():
    m, b = TinyNP(), batch()
    tr = poutine.trace(m.model).get_trace(b.context_only())
    assert "y_target" not in tr.nodes
    tr = poutine.trace(m.model).get_trace(b.without_target_y())
    assert not tr.nodes["y_target"]["is_observed"] and tr.nodes["y_target"]["value"].shape == (3, 5, 1)


def test_point_plate_over_an_empty_split_is_a_harmless_no_op():
    """Pyro has no zero-size plate: the block runs, its sites are hidden and contribute nothing."""
    b = batch().context_only()

    def model():
        with pyro_meta.point_plate(b, "target") as idx:
            assert idx.numel() == 0
            y = pyro.sample("y_target", dist.Normal(b.target_x, 1.0).to_event(1), obs=b.target_x)
        return y

    tr = poutine.trace(model).get_trace()
    assert "y_target" not in tr.nodes and tr.log_prob_sum() == 0


def test_mask_gives_the_exact_ragged_log_density():
    """The masked padded log-density equals the density of the real points alone."""
    m, b = TinyNP(), batch()
    z = torch.randn(3, 1, 2)
    tr = poutine.trace(poutine.condition(m.model, {"z": z})).get_trace(b)
    tr.compute_log_prob()
    padded = tr.nodes["y_context"]["log_prob"].sum()
    ref = 0.0
    for t in range(3):
        k = int(b.context_mask[t].sum())
        sub = TaskBatch(
            b.context_x[t : t + 1, :k], b.context_y[t : t + 1, :k], b.target_x[t : t + 1], b.target_y[t : t + 1]
        )
        tr1 = poutine.trace(poutine.condition(m.model, {"z": z[t : t + 1]})).get_trace(sub)
        tr1.compute_log_prob()
        ref = ref + tr1.nodes["y_context"]["log_prob"].sum()
    assert torch.allclose(padded, ref, atol=1e-5)
    # and the padded values do not matter
    b2 = b.replace(context_y=torch.where(b.context_mask[..., None], b.context_y, b.context_y + 100.0))
    tr2 = poutine.trace(poutine.condition(m.model, {"z": z})).get_trace(b2)
    tr2.compute_log_prob()
    assert torch.allclose(tr2.nodes["y_context"]["log_prob"].sum(), padded)


def test_no_task_latent_is_a_clear_error():
    class NoLatent(pyro_meta.MetaModel):
        def model(self, batch):
            with pyro_meta.task_plate(batch):
                pyro_meta.observe(batch, lambda x: dist.Normal(x, 1.0).to_event(1))

    with pytest.raises(ValueError, match="no task-level latent"):
        pyro_meta.task_latent_sites(NoLatent(), batch())


def test_plain_pyro_svi_clashes_but_pyro_meta_fit_isolates():
    """Two PyroModule instances of one class share Pyro's global param names; fit keeps them apart."""
    a, b = TinyNP(), TinyNP()
    a_before = {k: v.clone() for k, v in a.state_dict().items()}
    pyro_meta.fit(b, Sinusoid(noise_std=0.1), num_steps=3, tasks_per_batch=4, lr=0.05, progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, a_before[k]), k
    pyro_meta.fit(a, Sinusoid(noise_std=0.1), num_steps=3, tasks_per_batch=4, lr=0.05, progress=False, seed=1)
    assert not torch.equal(a.decoder.weight, b.decoder.weight)
    assert len(pyro.get_param_store()) == 0
    # The trap we guard against: under Pyro's global param store, the second instance's
    # decoder weight *is* the first's (same name "decoder.weight").
    with poutine.trace() as tr:
        a.decoder(torch.zeros(1, 3))
    with poutine.trace() as tr2:
        b.decoder(torch.zeros(1, 3))
    assert pyro.get_param_store()["decoder.weight"] is not None
    assert torch.equal(tr.trace.nodes["decoder.weight"]["value"], tr2.trace.nodes["decoder.weight"]["value"])


def test_global_latents_are_found():
    class WithGlobal(TinyNP):
        def model(self, batch):
            pyro.sample("noise", dist.LogNormal(0.0, 1.0))
            super().model(batch)

    assert global_latent_sites(WithGlobal(), batch()) == ("noise",)


class BothSplits(pyro_meta.MetaModel):
    """Observes both splits inside ``point_plate`` with no guard for an empty split (as the plates' docs suggest)."""

    def model(self, batch):
        with pyro_meta.task_plate(batch):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            for split in ("context", "target"):
                with pyro_meta.point_plate(batch, split):
                    x = batch.x(split)
                    pyro.sample(
                        f"y_{split}", dist.Normal(z[..., :1] * x + z[..., 1:], 0.3).to_event(1), obs=batch.y(split)
                    )

    def guide(self, batch):
        with pyro_meta.task_plate(batch):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))


@pytest.mark.parametrize("method", pyro_meta.available_methods())
def test_a_model_observing_both_splits_in_point_plates_runs_under_every_method(method):
    """``infer`` conditions on a context-only batch (``Nt = 0``): the empty target plate must be harmless."""
    opts = {
        "svi": {"num_steps": 3},
        "importance": {"num_proposals": 64},
        "nuts": {"num_warmup": 5, "num_chains": 1},
        "hmc": {"num_warmup": 5, "num_chains": 1},
        "batched_hmc": {"num_warmup": 5, "num_chains": 1},
    }.get(method, {})
    model, b = BothSplits(), batch()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        post = pyro_meta.infer(model, b, method=method, num_samples=6, seed=0, **opts)
    assert post.predict().samples.shape[-3:] == (3, 5, 1)


def test_pyrosample_attributes_are_sample_sites_of_the_model():
    class WithPrior(TinyNP):
        def __init__(self):
            super().__init__()
            self.decoder.weight = pyro.nn.PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))

        def model(self, batch):
            w = self.decoder.weight  # read outside the plates: one global draw, cached for this run
            assert self.decoder.weight is w
            super().model(batch)

    m = WithPrior()
    tr = poutine.trace(m.model).get_trace(batch())
    assert tr.nodes["decoder.weight"]["type"] == "sample" and tr.nodes["decoder.weight"]["value"].shape == (1, 3)
    assert global_latent_sites(m, batch()) == ("decoder.weight",)


def test_assigning_a_guide_module_and_the_errors_around_it():
    from pyro.infer.autoguide import AutoNormal

    class Assigned(pyro_meta.MetaModel):
        def __init__(self):
            super().__init__()
            self.decoder = PyroModule[nn.Linear](3, 1)
            self.guide = AutoNormal(self.model)  # nn.Module refuses it (``guide`` is a method): MetaModel takes it

        model = TinyNP.model

    m = Assigned()
    assert m._modules["guide"] is not None and "guide" in dict(m.named_children())
    tr = poutine.trace(m.guide).get_trace(batch())
    assert tr.nodes["z"]["value"].shape == (3, 1, 2)
    assert any(name.startswith("guide.") for name, _ in m.named_parameters())  # the guide's parameters are the model's
    with pytest.raises(TypeError, match="defines a guide"):
        TinyNP().guide = AutoNormal(TinyNP().model)


def test_a_model_that_does_not_broadcast_over_draws_gets_the_vectorized_hint():
    class Flat(TinyNP):
        def model(self, batch):
            with pyro_meta.task_plate(batch):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
                z = z.reshape(batch.num_tasks, 1, 2)  # breaks with a leading draws dim
                pyro_meta.observe(batch, lambda x: dist.Normal(z[..., :1] * x, 0.1).to_event(1))

    with pytest.raises(ValueError, match="vectorized = False"):
        pyro_meta.infer(Flat(), batch(), method="prior", num_samples=4)
    m = Flat()
    m.vectorized = False
    assert pyro_meta.infer(m, batch(), method="prior", num_samples=4).samples["z"].shape == (1, 4, 3, 2)


def test_dtype_mismatch_is_named_up_front_and_float64_models_keep_their_dtype():
    m, b = TinyNP(), batch()
    with pytest.raises(TypeError, match="torch.float32 but the batch is torch.float64"):
        pyro_meta.infer(m, b.to(torch.float64))
    with pytest.raises(TypeError, match="float32 but the batch is torch.float64"):
        pyro_meta.fit(m, b.to(torch.float64), num_steps=1, tasks_per_batch=2, progress=False)
    m64 = TinyNP().to(torch.float64)
    pred = pyro_meta.infer(m64, b.to(torch.float64), num_samples=5).predict()
    assert pred.mean.dtype == torch.float64 and pred.std.dtype == torch.float64


def test_progress_bars_for_svi_and_nuts(capsys, monkeypatch):
    # Pyro's MCMC hides its bar whenever a CI variable is set (pyro/infer/mcmc/logger.py)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    m, b = TinyNP(), batch()
    pyro_meta.infer(m, b, method="svi", num_samples=4, num_steps=3, progress=True)
    assert "svi" in capsys.readouterr().err
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pyro_meta.infer(m, b, method="nuts", num_samples=4, num_warmup=2, num_chains=1, progress=True)
    err = capsys.readouterr().err
    assert "Warmup" in err or "Sample" in err
    pyro_meta.infer(m, b, method="svi", num_samples=4, num_steps=3, progress=False)
    assert capsys.readouterr().err == ""
