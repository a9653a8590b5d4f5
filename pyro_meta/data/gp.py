"""``GPCurves``: functions drawn from a Gaussian process, the Neural Process protocol.

The protocol of the DeepMind Neural Process notebooks (Garnelo et al. 2018): ``x ~ U[-2, 2]``,
a squared-exponential kernel with per-task length scale ``~ U[0.1, 0.6]`` and signal scale
``~ U[0.1, 1]``, observation noise standard deviation 0.02, 3..49 context points and a target
set that contains the context. Matern-5/2 and periodic kernels are offered as well.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from .tasks import SizeSpec, TaskDistribution, _uniform, sample_sizes

__all__ = ["BNPGPCurves", "GPCurves", "KERNELS", "kernel_matrix"]

KERNELS = ("rbf", "matern52", "periodic")

#: per-kernel default length-scale ranges; the periodic kernel's length scale acts on
#: ``sin(pi r / period)``, so its values are not comparable with the stationary kernels'
DEFAULT_LENGTHSCALE_RANGE = {"rbf": (0.1, 0.6), "matern52": (0.1, 0.6), "periodic": (0.5, 1.0)}
DEFAULT_PERIOD_RANGE = (1.0, 2.0)


def kernel_matrix(
    kernel: str,
    x1: torch.Tensor,
    x2: torch.Tensor,
    lengthscale: torch.Tensor,
    signal_scale: torch.Tensor,
    period: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-task kernel matrices ``K [T, N1, N2]`` (noise-free).

    With ``r = ||x - x'||``, ``l`` the length scale, ``s`` the signal scale and ``p`` the period:

    - ``"rbf"``:      ``k = s^2 exp(-r^2 / (2 l^2))``
    - ``"matern52"``: ``k = s^2 (1 + sqrt(5) r / l + 5 r^2 / (3 l^2)) exp(-sqrt(5) r / l)``
    - ``"periodic"``: ``k = s^2 exp(-2 sin^2(pi r / p) / l^2)``

    Parameters
    ----------
    kernel : str
        One of ``KERNELS``.
    x1, x2 : Tensor ``[T, N1, Dx]``, ``[T, N2, Dx]``
    lengthscale, signal_scale, period : Tensor ``[T]`` (``period`` only for ``"periodic"``)
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if x1.dim() != 3 or x2.dim() != 3 or x1.shape[0] != x2.shape[0] or x1.shape[2] != x2.shape[2]:
        raise ValueError(f"x1, x2 must have shapes [T, N1, Dx], [T, N2, Dx], got {tuple(x1.shape)}, {tuple(x2.shape)}")
    T = x1.shape[0]

    def per_task(name, value):
        value = torch.as_tensor(value, dtype=x1.dtype, device=x1.device)
        if value.shape != (T,):
            raise ValueError(f"{name} must have shape [T] = [{T}], got {tuple(value.shape)}")
        return value[:, None, None]

    ell, s = per_task("lengthscale", lengthscale), per_task("signal_scale", signal_scale)
    diff = x1[:, :, None, :] - x2[:, None, :, :]
    sq = diff.pow(2).sum(-1)
    if kernel == "rbf":
        return s**2 * torch.exp(-0.5 * sq / ell**2)
    r = sq.clamp_min(1e-30).sqrt() * (sq > 0)  # no NaN gradient at r = 0
    if kernel == "matern52":
        u = math.sqrt(5.0) * r / ell
        return s**2 * (1 + u + u**2 / 3) * torch.exp(-u)
    if period is None:
        raise ValueError("period [T] is required for the periodic kernel")
    p = per_task("period", period)
    return s**2 * torch.exp(-2 * torch.sin(math.pi * r / p) ** 2 / ell**2)


class GPCurves(TaskDistribution):
    """Curves drawn from a zero-mean GP with per-task hyperparameters (the NP protocol).

    ``l ~ U[lengthscale_range]``, ``s ~ U[signal_scale_range]`` (and ``p ~ U[period_range]`` for the
    periodic kernel) per task, ``x ~ U[-2, 2]``, ``y ~ N(0, K(x, x) + noise_std^2 I)`` jointly over
    all (context and target) points of a task, with ``K`` from :func:`kernel_matrix`.

    Parameters
    ----------
    kernel : {"rbf", "matern52", "periodic"}
        Covariance function; see :func:`kernel_matrix` for the formulas.
    lengthscale_range : (low, high), optional
        Default ``(0.1, 0.6)`` for ``"rbf"`` and ``"matern52"`` (the NP notebooks) and
        ``(0.5, 1.0)`` for ``"periodic"`` (whose length scale acts on ``sin(pi r / p)``; near
        ``r = 0`` it behaves as an RBF of length scale ``l p / (2 pi)``).
    signal_scale_range : (low, high)
        Range of the signal standard deviation ``s`` (``k(x, x) = s^2``); default ``(0.1, 1.0)``.
    period_range : (low, high)
        Period range of the periodic kernel, default ``(1.0, 2.0)``: 2 to 4 periods on ``[-2, 2]``.
    noise_std : float
        Observation noise standard deviation (not variance), default 0.02 as in the NP notebooks.
    x_range : (low, high)
        Input range, default ``(-2, 2)``.
    jitter : float
        Added to the covariance diagonal before the Cholesky factorisation (in float64), default 1e-8.

    Notes
    -----
    ``batch.info`` holds ``lengthscale``, ``signal_scale``, ``period`` (0 for non-periodic kernels),
    ``noise_std`` (each ``[T]``) and ``kernel`` (the kernel name, a str).
    Targets include the context (``targets_include_context = True``) and the default set sizes of
    :meth:`sample` are the NP training protocol: 3..49 context and 2..49 further target points.
    """

    targets_include_context = True

    def __init__(
        self,
        kernel: str = "rbf",
        lengthscale_range: Optional[Tuple[float, float]] = None,
        signal_scale_range: Tuple[float, float] = (0.1, 1.0),
        period_range: Tuple[float, float] = DEFAULT_PERIOD_RANGE,
        noise_std: float = 0.02,
        x_range: Tuple[float, float] = (-2.0, 2.0),
        x_dim: int = 1,
        jitter: float = 1e-8,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if not isinstance(noise_std, (int, float)) or noise_std < 0:
            raise ValueError(f"noise_std must be a float >= 0, got {noise_std!r}")
        if not isinstance(x_dim, int) or x_dim < 1:
            raise ValueError(f"x_dim must be a positive int, got {x_dim!r}")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter!r}")
        self.kernel = kernel
        if lengthscale_range is None:
            lengthscale_range = DEFAULT_LENGTHSCALE_RANGE[kernel]
        self.lengthscale_range = _positive_range("lengthscale_range", lengthscale_range)
        self.signal_scale_range = _positive_range("signal_scale_range", signal_scale_range)
        self.period_range = _positive_range("period_range", period_range)
        self.noise_std = float(noise_std)
        self.x_range = (float(x_range[0]), float(x_range[1]))
        if not self.x_range[0] < self.x_range[1]:
            raise ValueError(f"x_range must satisfy low < high, got {x_range!r}")
        self.x_dim = x_dim
        self.jitter = float(jitter)

    def sample_params(self, num_tasks: int, generator: Optional[torch.Generator]) -> Dict[str, torch.Tensor]:
        params = {
            "lengthscale": _uniform(*self.lengthscale_range, (num_tasks,), generator),
            "signal_scale": _uniform(*self.signal_scale_range, (num_tasks,), generator),
            "period": torch.zeros(num_tasks),
            "noise_std": torch.full((num_tasks,), self.noise_std),
        }
        if self.kernel == "periodic":
            params["period"] = _uniform(*self.period_range, (num_tasks,), generator)
        return params

    def covariance(self, x: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Covariance of ``y`` at ``x [T, N, Dx]``: ``K(x, x) + noise_std^2 I``, ``[T, N, N]``."""
        K = kernel_matrix(self.kernel, x, x, params["lengthscale"], params["signal_scale"], params.get("period"))
        noise = params["noise_std"].to(x.dtype)[:, None, None] ** 2
        return K + noise * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)

    def sample_y(self, x: torch.Tensor, params: Dict[str, torch.Tensor], generator) -> torch.Tensor:
        """``y = L eps`` with ``L L^T = K(x, x) + (noise_std^2 + jitter) I`` (float64), ``[T, N, 1]``."""
        x64 = x.double()
        p64 = {k: v.double() for k, v in params.items()}
        cov = self.covariance(x64, p64)
        cov = cov + self.jitter * torch.eye(x.shape[1], dtype=torch.float64)
        L = torch.linalg.cholesky(cov)
        eps = torch.randn(x.shape[0], x.shape[1], 1, generator=generator, dtype=torch.float64)
        return (L @ eps).to(x.dtype)

    def sample(
        self,
        num_tasks: int = 16,
        num_context: SizeSpec = (3, 49),
        num_target: SizeSpec = (2, 49),
        generator: Optional[torch.Generator] = None,
    ):
        """Draw ``num_tasks`` GP curves; targets = context + ``num_target`` further points.

        Defaults follow the NP training protocol (3..49 context points, 2..49 more target points).
        See :meth:`TaskDistribution.sample`; ``batch.info["kernel"]`` is the kernel name.
        """
        batch = super().sample(num_tasks, num_context, num_target, generator)
        batch.info["kernel"] = self.kernel
        return batch

    def __repr__(self) -> str:
        return f"GPCurves(kernel={self.kernel!r}, noise_std={self.noise_std})"


def _positive_range(name: str, value) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a (low, high) pair of floats, got {value!r}") from None
    if not 0 < lo <= hi:
        raise ValueError(f"{name} must satisfy 0 < low <= high, got {value!r}")
    return lo, hi


class BNPGPCurves(GPCurves):
    """GP curves on the protocol of the BNP and TNP papers (Lee et al. 2020; Nguyen & Grover 2022).

    Their public GP sampler: ``x ~ U[-2, 2]``, signal scale ``s ~ U[0.1, 1]``, length scale
    ``l ~ U[0.1, 0.6]`` for every kernel, period ``p ~ U[0.1, 0.5]`` for the periodic kernel
    (``k = s^2 exp(-2 sin^2(pi r / p) / l^2)``: 8 to 40 periods on ``[-2, 2]``), observation noise sd 0.02;
    at most ``max_num_points = 50`` points per task, ``Nc ~ U{3, ..., 46}`` context points and
    ``Nt ~ U{3, ..., 49 - Nc}`` target points, the targets *disjoint* from the context (their
    ``randint(3, 47)`` and ``randint(3, 50 - Nc)``). As in the papers the sizes are drawn once per call
    (one batch: no padding, the cheaper training step); ``shared_sizes=False`` draws them per task (ragged
    sets, padded and masked; the same distribution per task).

    ``sample(num_tasks, num_context=None, num_target=None, generator=)``: ``None`` sizes follow the
    protocol (``Nt`` given ``Nc``); an int or an inclusive ``(min, max)`` range overrides them as in
    :meth:`GPCurves.sample` (with ``num_target=None`` then ``Nt ~ U{3, ..., max_num_points - 1 - Nc}``,
    at least 1). ``fit`` and ``evaluate`` pass ``None`` by default (``default_num_context`` and
    ``default_num_target`` are None).

    Parameters
    ----------
    kernel : {"rbf", "matern52", "periodic"}
    max_num_points : int
        Largest ``Nc + Nt`` (50 in the papers).
    min_context, min_target : int
        Smallest set sizes (3 in the papers).
    shared_sizes : bool
        Draw ``Nc`` and ``Nt`` once per :meth:`sample` call (the papers) or per task.
    **kwargs
        Overrides of :class:`GPCurves`'s ranges (``lengthscale_range``, ``period_range``, ...).
    """

    targets_include_context = False
    default_num_context = None
    default_num_target = None

    def __init__(
        self,
        kernel: str = "rbf",
        max_num_points: int = 50,
        min_context: int = 3,
        min_target: int = 3,
        shared_sizes: bool = True,
        **kwargs,
    ) -> None:
        kwargs.setdefault("lengthscale_range", (0.1, 0.6))
        kwargs.setdefault("period_range", (0.1, 0.5))
        super().__init__(kernel, **kwargs)
        for name, value in (
            ("max_num_points", max_num_points),
            ("min_context", min_context),
            ("min_target", min_target),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if min_context + min_target + 1 > max_num_points:
            raise ValueError(
                f"max_num_points ({max_num_points}) must exceed min_context + min_target ({min_context} + {min_target})"
            )
        self.max_num_points, self.min_context, self.min_target = max_num_points, min_context, min_target
        self.shared_sizes = bool(shared_sizes)

    def sample(
        self,
        num_tasks: int = 16,
        num_context: Optional[SizeSpec] = None,
        num_target: Optional[SizeSpec] = None,
        generator: Optional[torch.Generator] = None,
    ):
        """Draw ``num_tasks`` curves; sizes per task from the protocol unless given (see the class docstring).

        Returns a ``TaskBatch`` with ``context_x [T, Nc, 1]`` and disjoint ``target_x [T, Nt, 1]``;
        ``batch.info`` as :class:`GPCurves` (plus ``num_context``/``num_target`` per task).
        """
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        top = self.max_num_points - self.min_target - 1  # randint(3, max - 3): high exclusive
        draws = 1 if self.shared_sizes else num_tasks
        if num_context is None:
            nc = torch.randint(self.min_context, top + 1, (draws,), generator=generator)
        else:
            nc = sample_sizes(num_context, draws, "num_context", generator)
            if int(nc.min()) < 1:
                raise ValueError(f"num_context must be >= 1 for every task, got {num_context!r}")
        if num_target is None:
            high = (self.max_num_points - 1 - nc).clamp_min(1)  # inclusive upper end per task
            low = torch.minimum(torch.full_like(nc, self.min_target), high)
            u = torch.rand(draws, generator=generator)
            nt = low + (u * (high - low + 1)).long().clamp_max(high - low)
        else:
            nt = sample_sizes(num_target, draws, "num_target", generator)
        nc, nt = nc.expand(num_tasks), nt.expand(num_tasks)
        batch = self.sample_sized(nc, nt, generator)
        batch.info["kernel"] = self.kernel
        return batch

    def __repr__(self) -> str:
        return f"BNPGPCurves(kernel={self.kernel!r}, max_num_points={self.max_num_points}, shared_sizes={self.shared_sizes})"
