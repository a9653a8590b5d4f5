"""Inference methods as objects: :class:`InferenceMethod`, its :class:`InferenceResult`, and the registry.

``infer(model, batch, method="nuts")`` looks the name up in the registry, validates the options
against the method's declared :class:`Option` s, and calls :meth:`InferenceMethod.run` on the
prepared :class:`~pyro_meta.inference.common.Problem`. Everything downstream (``Posterior``,
``evaluate``, the ArviZ export) reads the one result type, so no module outside the method classes
branches on a method name, and a user adds a method with :func:`register_method` (as Pyro's
``MCMCKernel`` or NumPyro's ``SteinKernel``)::

    class Laplace(pyro_meta.InferenceMethod):
        name = "laplace"
        options = {"num_steps": Option(200, partial(check_int, minimum=1))}

        def run(self, problem, num_samples, num_steps):
            ...
            return InferenceResult(samples={"z": draws})   # {site: [C, S, T, *event]}

    pyro_meta.register_method(Laplace())
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

import torch

__all__ = [
    "InferenceMethod",
    "InferenceResult",
    "Option",
    "available_methods",
    "get_method",
    "register_method",
]


@dataclasses.dataclass(frozen=True)
class Option:
    """A method option: its default and a check ``check(name, value) -> value`` (raises on bad values)."""

    default: Any
    check: Optional[Callable[[str, Any], Any]] = None
    doc: str = ""


@dataclasses.dataclass
class InferenceResult:
    """What :meth:`InferenceMethod.run` returns.

    Attributes
    ----------
    samples : dict ``site -> Tensor``
        Task sites ``[C, S, T, *event]`` (``C`` chains, ``S`` draws per chain), global sites
        ``[C, S, *shape]`` (only when the method samples them).
    per_task : dict ``name -> Tensor [T]``
        Per-task diagnostics (``r_hat``, ``ess_bulk``, ``ess``, ``log_evidence``...); subset with the tasks.
    diagnostics : dict
        Everything else (chain-level statistics, settings, warnings).
    sample_stats : dict ``name -> Tensor [C, S]``
        Per-draw statistics (MCMC: ``diverging``, ``acceptance_rate``, ``step_size``, ``lp``).
    summary : dict ``column -> float``
        The numbers :func:`pyro_meta.evaluate` reports for this run (e.g. ``divergences``,
        ``min_ess``, ``max_r_hat``).
    bad_tasks : list of int
        Tasks the method flags as unreliable (e.g. poor mixing); renumbered by ``Posterior.select``.
    """

    samples: Dict[str, torch.Tensor]
    per_task: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    diagnostics: Dict[str, Any] = dataclasses.field(default_factory=dict)
    sample_stats: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    summary: Dict[str, float] = dataclasses.field(default_factory=dict)
    bad_tasks: List[int] = dataclasses.field(default_factory=list)
    #: ``(C, S)`` when ``samples`` is empty (a model without latent sites: the draws of its predictive)
    draws_shape: Optional[Tuple[int, int]] = None


class InferenceMethod:
    """Base class of inference methods over the task latents of a prepared problem.

    Subclasses set :attr:`name` and :attr:`options` and implement :meth:`run`. Class flags:
    :attr:`needs_task_latents` (False for methods that also serve models without a task latent)
    and :attr:`samples_globals` (True when the method can sample global latent sites jointly,
    ``infer(..., globals="sample")``).
    """

    name: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Option]] = {}
    needs_task_latents: ClassVar[bool] = True
    samples_globals: ClassVar[bool] = False

    def validate(self, options: Mapping[str, Any]) -> Dict[str, Any]:
        """The options with defaults filled in and every value checked (``TypeError`` for unknown names)."""
        unknown = sorted(set(options).difference(self.options))
        if unknown:
            known = sorted(self.options)
            raise TypeError(
                f"method={self.name!r} got unknown options {unknown}"
                + (f"; its options are {known}" if known else "; it takes no options")
            )
        out = {}
        for key, opt in self.options.items():
            value = options.get(key, opt.default)
            if opt.check is not None and (key in options or value is not None):
                value = opt.check(key, value)
            out[key] = value
        return out

    def run(self, problem: Any, num_samples: int, **options: Any) -> InferenceResult:
        raise NotImplementedError(f"{type(self).__name__} must implement run(problem, num_samples, **options)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_REGISTRY: Dict[str, InferenceMethod] = {}


def register_method(method: InferenceMethod, name: Optional[str] = None, overwrite: bool = False) -> InferenceMethod:
    """Add an inference method to the registry under ``name`` (default ``method.name``); returns it.

    ``method`` is an :class:`InferenceMethod` instance (or subclass, which is instantiated).
    Replacing an existing name needs ``overwrite=True``.
    """
    if isinstance(method, type) and issubclass(method, InferenceMethod):
        method = method()
    if not isinstance(method, InferenceMethod):
        raise TypeError(f"method must be a pyro_meta.InferenceMethod, got {type(method).__name__}")
    key = name or method.name
    if not isinstance(key, str) or not key:
        raise ValueError("the method needs a non-empty name (class attribute `name` or the name argument)")
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"an inference method named {key!r} is registered already (pass overwrite=True)")
    _REGISTRY[key] = method
    return method


def get_method(name: Any) -> InferenceMethod:
    """The registered method called ``name``, or ``ValueError`` listing the registered ones."""
    if isinstance(name, InferenceMethod):
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"method must be one of {available_methods()}, got {name!r}")
    return _REGISTRY[name]


def available_methods() -> Tuple[str, ...]:
    """Names of the registered inference methods, in registration order."""
    return tuple(_REGISTRY)
