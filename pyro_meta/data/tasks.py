"""Task distributions: ``.sample(num_tasks, num_context, num_target, generator=)`` -> ``TaskBatch``.

Any object with that ``sample`` method is a task distribution for :func:`pyro_meta.fit`;
:class:`TaskDistribution` is a convenient base class for regression families
``y = f_task(x) + noise``.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from .batch import TaskBatch
from .features import PolynomialFeatures

__all__ = ["TaskDistribution", "Sinusoid", "LinearTasks", "SizeSpec", "sample_sizes"]

SizeSpec = Union[int, Tuple[int, int]]


def sample_sizes(spec: SizeSpec, num_tasks: int, name: str, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Per-task set sizes ``[T]`` from an int or an inclusive ``(min, max)`` range."""
    if isinstance(spec, bool) or not isinstance(spec, (int, tuple, list)):
        raise TypeError(f"{name} must be an int or an inclusive (min, max) pair, got {spec!r}")
    if isinstance(spec, int):
        lo = hi = spec
    else:
        if len(spec) != 2:
            raise ValueError(f"{name} must be an inclusive (min, max) pair, got {spec!r}")
        lo, hi = int(spec[0]), int(spec[1])
    if lo < 0 or hi < lo:
        raise ValueError(f"{name} must satisfy 0 <= min <= max, got {spec!r}")
    if lo == hi:
        return torch.full((num_tasks,), lo, dtype=torch.long)
    return torch.randint(lo, hi + 1, (num_tasks,), generator=generator)


def _uniform(low: float, high: float, shape, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator)


class TaskDistribution:
    """Base class for regression task families ``y = f_task(x) + noise_std * eps``.

    Subclasses implement ``sample_params(T, generator) -> dict of [T, ...]`` and
    ``function(x [T, N, Dx], params) -> [T, N, Dy]``; they may override ``sample_x`` and
    ``sample_y`` (e.g. a GP draws ``y`` jointly).
    """

    x_dim: int = 1
    y_dim: int = 1
    x_range: Tuple[float, float] = (-5.0, 5.0)
    noise_std: float = 0.0
    #: when True the target set contains the context points (the NP protocol)
    targets_include_context: bool = False

    def sample_params(self, num_tasks: int, generator: Optional[torch.Generator]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def function(self, x: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def sample_x(self, num_tasks: int, num_points: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        return _uniform(*self.x_range, (num_tasks, num_points, self.x_dim), generator)

    def sample_y(self, x: torch.Tensor, params: Dict[str, torch.Tensor], generator) -> torch.Tensor:
        f = self.function(x, params)
        if self.noise_std > 0:
            f = f + self.noise_std * torch.randn(f.shape, generator=generator)
        return f

    def sample(
        self,
        num_tasks: int = 16,
        num_context: SizeSpec = 5,
        num_target: SizeSpec = 20,
        generator: Optional[torch.Generator] = None,
    ) -> TaskBatch:
        """Draw ``num_tasks`` tasks.

        ``num_context``/``num_target`` is an int or an inclusive ``(min, max)`` range drawn per
        task (ragged sets are padded and masked). Task parameters go to ``batch.info``.
        Pass a seeded ``torch.Generator`` for reproducible draws; without one torch's global
        RNG is used (seeded by ``pyro.set_rng_seed``).
        """
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        nc = sample_sizes(num_context, num_tasks, "num_context", generator)
        nt = sample_sizes(num_target, num_tasks, "num_target", generator)
        if int(nc.min()) < 1:
            raise ValueError(f"num_context must be >= 1 for every task, got {num_context!r}")
        return self.sample_sized(nc, nt, generator)

    def sample_sized(
        self, nc: torch.Tensor, nt: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> TaskBatch:
        """Draw ``T`` tasks with the given per-task context and target sizes ``nc [T]``, ``nt [T]`` (long).

        The part of :meth:`sample` after the set sizes are drawn (task parameters, inputs, outputs, in
        that order of random draws); subclasses with their own size protocol call it.
        """
        num_tasks = int(nc.shape[0])
        Nc, Nt = int(nc.max()), int(nt.max())
        params = self.sample_params(num_tasks, generator)
        x = self.sample_x(num_tasks, Nc + Nt, generator)
        y = self.sample_y(x, params, generator)
        idx = torch.arange(max(Nc, Nt))
        cmask = idx[:Nc] < nc[:, None]
        tmask = idx[:Nt] < nt[:, None]
        cx, cy = x[:, :Nc], y[:, :Nc]
        tx, ty = x[:, Nc:], y[:, Nc:]
        if self.targets_include_context:
            tx, ty = torch.cat([cx, tx], 1), torch.cat([cy, ty], 1)
            tmask = torch.cat([cmask, tmask], 1)
        info = dict(params)
        info["num_context"], info["num_target"] = nc, tmask.sum(-1)
        return TaskBatch(cx, cy, tx, ty, cmask, tmask, info)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Sinusoid(TaskDistribution):
    """Sinusoid regression, the MAML protocol (Finn et al. 2017, their public code).

    ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``, ``x ~ U[-5, 5]``, ``y = A sin(x - phase) + noise_std * eps``.
    ``batch.info`` holds ``amplitude [T]`` and ``phase [T]``.
    """

    def __init__(
        self,
        amplitude_range: Tuple[float, float] = (0.1, 5.0),
        phase_range: Tuple[float, float] = (0.0, math.pi),
        x_range: Tuple[float, float] = (-5.0, 5.0),
        noise_std: float = 0.0,
    ) -> None:
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.amplitude_range = tuple(amplitude_range)
        self.phase_range = tuple(phase_range)
        self.x_range = tuple(x_range)
        self.noise_std = float(noise_std)

    def sample_params(self, num_tasks, generator):
        return {
            "amplitude": _uniform(*self.amplitude_range, (num_tasks,), generator),
            "phase": _uniform(*self.phase_range, (num_tasks,), generator),
        }

    def function(self, x, params):
        return params["amplitude"][:, None, None] * torch.sin(x - params["phase"][:, None, None])

    def __repr__(self) -> str:
        return f"Sinusoid(noise_std={self.noise_std})"


class LinearTasks(TaskDistribution):
    """Random linear functions of fixed features: the data of the conjugate ``BayesianLinear``.

    ``w_t ~ N(weight_mean, diag(weight_scale^2))``, ``x ~ U[x_range]``,
    ``y = phi(x) @ w_t + noise_std * eps`` with ``phi`` a fixed feature map
    (default cubic polynomial on ``x in [-1, 1]``). ``batch.info["weights"]`` is ``[T, K]``.
    """

    def __init__(
        self,
        features: Optional[nn.Module] = None,
        weight_mean: Optional[torch.Tensor] = None,
        weight_scale: Optional[torch.Tensor] = None,
        noise_std: float = 0.3,
        x_range: Tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        self.features = features if features is not None else PolynomialFeatures(3)
        K = self.features.num_features
        self.weight_mean = (
            torch.as_tensor(weight_mean, dtype=torch.float) if weight_mean is not None else torch.linspace(1.0, -0.5, K)
        )
        self.weight_scale = (
            torch.as_tensor(weight_scale, dtype=torch.float)
            if weight_scale is not None
            else torch.linspace(1.0, 0.5, K)
        )
        if self.weight_mean.shape != (K,) or self.weight_scale.shape != (K,):
            raise ValueError(f"weight_mean and weight_scale must have shape [K] = [{K}]")
        if not bool((self.weight_scale > 0).all()):
            raise ValueError("weight_scale must be positive")
        if noise_std <= 0:
            raise ValueError(f"noise_std must be > 0, got {noise_std}")
        self.noise_std = float(noise_std)
        self.x_range = tuple(x_range)

    def sample_params(self, num_tasks, generator):
        K = self.weight_mean.shape[0]
        eps = torch.randn(num_tasks, K, generator=generator)
        return {"weights": self.weight_mean + self.weight_scale * eps}

    def function(self, x, params):
        with torch.no_grad():
            phi = self.features(x)
        return (phi @ params["weights"][:, :, None]).to(x.dtype)

    def __repr__(self) -> str:
        return f"LinearTasks(features={self.features}, noise_std={self.noise_std})"
