"""A contract test class that every zoo model's tests subclass (as GPyTorch's base test cases).

Usage in ``tests/models/test_my_model.py``::

    from pyro_meta.testing import MetaModelContract

    class TestMyModel(MetaModelContract):
        def make_model(self):
            return MyModel()

The contract: task latents are found by tracing; the model runs on a context-only batch and
broadcasts over draws; ``fit`` steps stay finite and move the parameters; every supported
``infer`` method gives samples ``[C, S, T, ...]`` and a finite predictive ``[C, S, T, Nt, Dy]``;
the same seed gives the same numbers; two instances never share parameters.
Requires pytest (a test dependency, not a runtime one).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import pyro
import pytest
import torch

from .data.batch import TaskBatch
from .data.episodes import Episodes
from .data.tasks import Sinusoid
from .inference import available_methods, fit, get_method, infer
from .model import MetaModel, discover_sites, task_latent_sites

__all__ = ["MetaModelContract", "assert_close", "toy_episodes"]


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, atol: float = 0.0, rtol: float = 0.0, what: str = "value"
) -> None:
    """Assert ``|actual - expected| <= atol + rtol |expected|`` elementwise; the message shows the worst error."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    excess = err - bound
    if bool((excess > 0).any()) or not bool(torch.isfinite(actual).all()):
        i = int(torch.nan_to_num(excess, nan=float("inf")).flatten().argmax())
        raise AssertionError(
            f"{what}: worst error {float(err.flatten()[i]):.4g} at flat index {i} "
            f"(actual {float(actual.flatten()[i]):.4g}, expected {float(expected.flatten()[i]):.4g}, "
            f"allowed {float(bound.flatten()[i]):.4g})"
        )


def toy_episodes(
    way: int = 3,
    num_classes: int = 6,
    per_class: int = 10,
    dim: int = 4,
    image_shape: Any = None,
    shots: Any = 1,
    queries: Any = 2,
    seed: int = 0,
) -> Episodes:
    """Small synthetic N-way episodes for fast classification tests: Gaussian clusters of vectors or images.

    ``num_classes`` classes of ``per_class`` examples: class ``c`` is a random centre ``mu_c ~ N(0, I)``
    plus ``N(0, 0.3^2)`` noise per example, as vectors ``[dim]`` or, with ``image_shape=(H, W)``, as images
    ``[H, W]`` (``dim`` ignored). Returns :class:`~pyro_meta.data.Episodes` (``way``, ``shots``, ``queries``).
    """
    g = torch.Generator().manual_seed(seed)
    shape = (dim,) if image_shape is None else tuple(image_shape)
    centres = torch.randn((num_classes,) + shape, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = centres[labels] + 0.3 * torch.randn((num_classes * per_class,) + shape, generator=g)
    return Episodes(x, labels, way=way, shots=shots, queries=queries)


def _starts_at_the_median(method: str) -> bool:
    """Whether ``method`` takes ``init="median"`` (a Markov chain from a deterministic start: NUTS, HMC)."""
    try:
        get_method(method).validate({"init": "median"})
    except (TypeError, ValueError):
        return False
    return True


class MetaModelContract:
    """Base class of every zoo model's tests. Subclasses define :meth:`make_model`.

    Class attributes to adjust: ``methods`` (the ``infer`` methods the model supports),
    ``method_options`` (small, fast settings per method), ``num_tasks``, ``num_context``,
    ``num_target``, ``num_samples``; override :meth:`make_tasks` for non-sinusoid data.
    """

    methods: Tuple[str, ...] = available_methods()
    method_options: Dict[str, Dict[str, Any]] = {
        "svi": {"num_steps": 5, "num_particles": 2},
        "importance": {"num_proposals": 64},
        "nuts": {"num_warmup": 10, "num_chains": 2, "max_tree_depth": 4},
        # a fixed step: Pyro's HMC keeps the trajectory length (num_steps x the initial step size 1), so an adapted
        # step of 1e-4 would mean 40,000 leapfrog steps per draw (seen: 229 s for one toy ABML contract test)
        "hmc": {"num_warmup": 10, "num_chains": 1, "num_steps": 4, "step_size": 0.1, "adapt_step_size": False},
        "batched_hmc": {"num_warmup": 10, "num_chains": 2},
    }
    #: also run every method with ``vectorized = False`` (one trace per draw) and compare (slower)
    check_unvectorized: bool = False
    #: False for a model without task latents (a conditional model): methods that infer latents must
    #: refuse it with a clear error, ``"amortized"`` gives the model's own predictive
    has_task_latent: bool = True
    num_tasks: int = 3
    num_context: Any = (2, 4)
    num_target: int = 5
    num_samples: int = 8
    fit_options: Dict[str, Any] = {"lr": 1e-2}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.check_unvectorized:
            cls.test_unvectorized_agrees = None  # not collected (pytest ignores non-callables)

    # ------------------------------------------------------------ hooks
    def make_model(self) -> MetaModel:
        raise NotImplementedError("subclasses return a fresh model instance")

    def make_tasks(self):
        return Sinusoid(noise_std=0.1)

    # ------------------------------------------------------------ helpers
    def new_model(self, seed: int = 0) -> MetaModel:
        pyro.set_rng_seed(seed)
        return self.make_model()

    def batch(self, seed: int = 0) -> TaskBatch:
        g = torch.Generator().manual_seed(seed)
        return self.make_tasks().sample(self.num_tasks, self.num_context, self.num_target, generator=g)

    def _fit(self, model: MetaModel, steps: int = 2, seed: int = 0):
        return fit(
            model,
            self.make_tasks(),
            num_steps=steps,
            tasks_per_batch=self.num_tasks,
            num_context=self.num_context,
            num_target=self.num_target,
            seed=seed,
            progress=False,
            **self.fit_options,
        )

    # ------------------------------------------------------------ tests
    def test_is_meta_model(self):
        assert isinstance(self.new_model(), MetaModel)

    def test_site_discovery(self):
        model, batch = self.new_model(), self.batch()
        if not self.has_task_latent:
            assert not discover_sites(model, batch)[0], "a conditional model must have no task latent"
            with pytest.raises(ValueError, match="no task-level latent"):
                task_latent_sites(model, batch)
            return
        sites = task_latent_sites(model, batch)
        assert sites, "no task latent found"
        assert "y_context" not in sites and "y_target" not in sites
        again = task_latent_sites(model, batch.context_only())
        shapes = {k: tuple(v.event_shape) for k, v in sites.items()}
        assert shapes == {k: tuple(v.event_shape) for k, v in again.items()}, "sites differ on a context-only batch"

    def test_model_and_guide_shapes(self):
        model, batch = self.new_model(), self.batch()
        T = batch.num_tasks
        tr = pyro.poutine.trace(model.model).get_trace(batch)
        sites = discover_sites(model, batch)[0]
        for name, info in sites.items():
            assert tuple(tr.nodes[name]["value"].shape) == (T, 1) + tuple(info.event_shape), name
        gtr = pyro.poutine.trace(model.guide).get_trace(batch)
        for name, info in sites.items():
            assert tuple(gtr.nodes[name]["value"].shape[-len(info.event_shape) - 2 :]) == (T, 1) + tuple(
                info.event_shape
            )
        ytr = pyro.poutine.trace(model.model).get_trace(batch.without_target_y())
        y = ytr.nodes["y_target"]["value"]
        expected = tuple(batch.target_x.shape[:2]) + ((batch.y_dim,) if not batch.is_classification else ())
        assert tuple(y.shape) == expected, f"y_target {tuple(y.shape)} != {expected}"

    def test_fit_step_is_finite_and_moves_parameters(self):
        model = self.new_model()
        before = [p.detach().clone() for p in model.parameters()]
        result = self._fit(model, steps=2)
        assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
        after = list(model.parameters())
        assert all(bool(torch.isfinite(p).all()) for p in after)
        assert any(not torch.equal(a, b) for a, b in zip(after, before)), "fit changed no parameter"

    @pytest.mark.parametrize("method", available_methods())
    def test_infer_method(self, method):
        if method not in self.methods:
            pytest.skip(f"{type(self).__name__} does not support method={method!r}")
        model, batch = self.new_model(), self.batch()
        self._fit(model, steps=2)
        options = self.method_options.get(method, {})
        if not self.has_task_latent and get_method(method).needs_task_latents:
            with pytest.raises(ValueError, match=type(model).__name__):
                infer(model, batch, method=method, num_samples=self.num_samples, seed=0, **options)
            return
        post = infer(model, batch, method=method, num_samples=self.num_samples, seed=0, **options)
        T = batch.num_tasks
        for name, info in post.sites.items():
            s = post.samples[name]
            assert s.shape[1:] == (self.num_samples, T) + tuple(info.event_shape), (name, s.shape)
            assert bool(torch.isfinite(s.float()).all()), name
        pred = post.predict()
        expected = (post.num_chains, self.num_samples) + tuple(batch.target_x.shape[:2])
        assert tuple(pred.samples.shape[:4]) == expected
        assert bool(torch.isfinite(pred.samples.float()).all())
        lp = pred.log_prob(batch.target_y)
        assert lp.shape == batch.target_mask.shape and bool(torch.isfinite(lp).all())
        assert bool((lp[~batch.target_mask] == 0).all()), "padded target points must not count"

    @pytest.mark.parametrize("method", available_methods())
    def test_unvectorized_agrees(self, method):
        """``vectorized = False`` (one trace per draw) gives the same log densities and draws distributions.

        Collected only where ``check_unvectorized = True`` (one trace per draw is slow).
        """
        if method not in self.methods:
            pytest.skip(f"{type(self).__name__} does not support method={method!r}")
        from .arviz import pointwise_log_likelihood

        model, batch = self.new_model(), self.batch()
        self._fit(model, steps=2)
        options = dict(self.method_options.get(method, {}))
        mcmc = _starts_at_the_median(method)  # NUTS/HMC: one chain per task from a fixed start
        if mcmc:
            # MCMC evaluates one (unbatched) trace per step; from the same start the chains are identical
            options["init"] = "median"
        num = self.num_samples if mcmc else 200
        runs = []
        for vectorized in (True, False):
            model.vectorized = vectorized  # an instance attribute shadows the class's
            try:
                post = infer(model, batch, method=method, num_samples=num, seed=0, **options)
                lik = pointwise_log_likelihood(post)
                pred = post.predict(num_samples=8)
                runs.append((post, lik, pred))
            finally:
                del model.vectorized
        (pv, lik_v, pred_v), (pu, lik_u, pred_u) = runs
        # the same draws give the same densities whichever way they are traced
        model.vectorized = False
        try:
            lik_cross = pointwise_log_likelihood(pv)
        finally:
            del model.vectorized
        for k in lik_v:
            assert_close(lik_cross[k], lik_v[k], atol=1e-4, rtol=1e-4, what=f"log-likelihood {k}, vectorized=False")
        assert tuple(pred_u.samples.shape) == tuple(pred_v.samples.shape)
        for name in pv.samples:
            a, b = pv.samples[name].flatten(0, 1).double(), pu.samples[name].flatten(0, 1).double()
            assert a.shape == b.shape and bool(torch.isfinite(b).all()), name
            if mcmc:
                assert_close(b, a, atol=1e-4, what=f"{method} draws of {name}, vectorized=False")
                continue
            sd = torch.sqrt(0.5 * (a.var(0) + b.var(0))).clamp_min(1e-6)
            bound = 6 * sd * (2 / 50) ** 0.5  # at least 50 effective draws per run
            excess = (a.mean(0) - b.mean(0)).abs() - bound
            assert bool((excess <= 1e-6).all()), f"{method}: means of {name} differ beyond Monte Carlo error"

    def test_same_seed_same_numbers(self):
        runs = []
        for _ in range(2):
            model = self.new_model(seed=3)
            res = self._fit(model, steps=2, seed=3)
            post = infer(model, self.batch(), method="amortized", num_samples=4, seed=5)
            draws = {k: v.clone() for k, v in post.samples.items()} or {"y_target": post.predict().samples}
            runs.append((res.losses, draws))
        assert runs[0][0] == runs[1][0], "fit losses differ for the same seed"
        for k in runs[0][1]:
            assert torch.equal(runs[0][1][k], runs[1][1][k]), f"amortized draws of {k} differ for the same seed"

    def test_checkpoint_round_trip(self, tmp_path):
        """``save_checkpoint`` with ``model_args`` -> ``rebuild_model``: same class, same weights, same draws."""
        from .checkpoint import rebuild_model, save_checkpoint

        model = self.new_model(seed=0)
        self._fit(model, steps=1)
        path = tmp_path / "model.ckpt"
        save_checkpoint(path, model, meta={"model_args": model.init_args})
        again = rebuild_model(path, allow=("pyro_meta", type(model).__module__.split(".")[0]))
        assert type(again) is type(model)
        state = again.state_dict()
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), f"{k} differs after the round trip"
        a = infer(model.eval(), self.batch(), method="amortized", num_samples=3, seed=2).predict().mean
        b = infer(again.eval(), self.batch(), method="amortized", num_samples=3, seed=2).predict().mean
        assert torch.allclose(a, b), "the rebuilt model predicts differently"

    def test_two_instances_keep_their_own_parameters(self):
        a, b = self.new_model(seed=0), self.new_model(seed=1)
        self._fit(a, steps=2)
        a_state = {k: v.detach().clone() for k, v in a.state_dict().items()}
        self._fit(b, steps=3, seed=1)
        for k, v in a.state_dict().items():
            assert torch.equal(v, a_state[k]), f"training the second instance changed the first's {k}"
        assert len(pyro.get_param_store()) == 0, "parameters leaked into Pyro's global param store"
