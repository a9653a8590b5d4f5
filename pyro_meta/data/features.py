"""Fixed feature maps ``phi(x)``, shared by ``LinearTasks`` and the ``BayesianLinear`` model."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PolynomialFeatures", "FourierFeatures"]


class PolynomialFeatures(nn.Module):
    """``phi(x) = [1, x, x^2, ..., x^degree]`` for scalar inputs: ``[..., N, 1] -> [..., N, degree + 1]``."""

    def __init__(self, degree: int = 3) -> None:
        super().__init__()
        if degree < 0:
            raise ValueError(f"degree must be >= 0, got {degree}")
        self.degree = degree
        self.num_features = degree + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 1:
            raise ValueError(f"PolynomialFeatures takes x of shape [..., N, 1], got {tuple(x.shape)}")
        powers = torch.arange(self.degree + 1, dtype=x.dtype, device=x.device)
        return x**powers

    def extra_repr(self) -> str:
        return f"degree={self.degree}"


class FourierFeatures(nn.Module):
    """Fixed random Fourier features ``phi(x) = sqrt(2/K) cos(x W + b)``: ``[..., N, Dx] -> [..., N, K]``.

    ``W ~ N(0, 1/lengthscale^2)``, ``b ~ U[0, 2 pi]``, drawn once from ``seed`` (a buffer, so
    two instances with one seed give the same features and the features are saved with a model).
    """

    def __init__(self, x_dim: int = 1, num_features: int = 8, lengthscale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_features = num_features
        self.register_buffer("W", torch.randn(x_dim, num_features, generator=g) / lengthscale)
        self.register_buffer("b", 2 * math.pi * torch.rand(num_features, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.W.shape[0]:
            raise ValueError(f"FourierFeatures takes x of shape [..., N, {self.W.shape[0]}], got {tuple(x.shape)}")
        return math.sqrt(2.0 / self.num_features) * torch.cos(x @ self.W.to(x.dtype) + self.b.to(x.dtype))
