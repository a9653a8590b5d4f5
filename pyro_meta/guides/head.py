"""``Head``: the common base of amortized guide heads ``h [T, H] -> q(z_t | context_t)``.

A head maps a task embedding (e.g. the masked mean of a set encoder over a task's observed
points) to a distribution over that task's latent ``z_t`` with the library's task-plate shapes:
batch shape ``[T, 1]`` (tasks at dim -2, the singleton points dim at -1) and event shape ``[D]``.
So inside a guide::

    with pyro_meta.task_plate(batch):
        pyro.sample("z", head(h))                # z [T, 1, D]; under the draws plate [S, T, 1, D]

Every head is *near* ``N(0, I)`` at initialisation: its last layer has small weights (``init_scale``)
and biases chosen so that the mean is 0 and the scale 1, whatever the embedding.
"""

from __future__ import annotations

import math
from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from ..validation import check_int

__all__ = ["Head", "inverse_softplus", "mlp"]

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (``y > 0``): ``log(expm1(y))``."""
    if not y > 0:
        raise ValueError(f"inverse_softplus needs y > 0, got {y}")
    return y + math.log(-math.expm1(-y))


def mlp(sizes: Sequence[int], activation: str = "silu") -> nn.Sequential:
    """``Linear -> activation -> ... -> Linear`` over the last dim (no activation after the last layer)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _positive_int(name: str, value: object) -> int:
    return check_int(name, value)


class Head(nn.Module):
    """Base class: ``head(h)`` with ``h [T, H]`` returns a Pyro distribution, batch ``[T, 1]``, event ``[D]``.

    Parameters
    ----------
    embed_dim : int
        Size ``H`` of the task embedding.
    latent_dim : int
        Size ``D`` of the task latent.
    hidden : sequence of int
        Hidden widths of the network from ``h`` to the distribution's parameters (``()``: linear).
    activation : "silu" | "relu" | "tanh" | "gelu"
        Nonlinearity of that network.
    init_scale : float
        Standard deviation of the last layer's initial weights (small: the head starts near a
        fixed distribution close to ``N(0, I)``, whatever ``h``).

    Notes
    -----
    Subclasses set ``num_params`` (outputs of the network) before calling :meth:`_build`, and
    implement :meth:`distribution` from the raw outputs ``[T, 1, num_params]``.
    """

    def __init__(
        self,
        embed_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (),
        activation: str = "silu",
        init_scale: float = 1e-2,
    ) -> None:
        super().__init__()
        self.embed_dim = _positive_int("embed_dim", embed_dim)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        hidden = tuple(hidden)
        for w in hidden:
            _positive_int("hidden widths", w)
        if not init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale}")
        self.hidden, self.activation, self.init_scale = hidden, activation, float(init_scale)

    def _build(self, num_params: int, bias: torch.Tensor) -> None:
        """The network ``h [T, H] -> raw [T, num_params]``; its last layer starts at weights ~ N(0, init_scale^2), ``bias``."""
        self.net = mlp((self.embed_dim,) + self.hidden + (num_params,), self.activation)
        last = self.net[-1]
        with torch.no_grad():
            last.weight.normal_(0.0, self.init_scale)
            last.bias.copy_(bias)

    def check(self, h: object) -> torch.Tensor:
        """Validate the embedding: a finite float tensor ``[T, H]``; raise ``TypeError``/``ValueError`` otherwise."""
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"h must be a torch.Tensor of shape [T, H={self.embed_dim}], got {type(h).__name__}")
        if not h.is_floating_point():
            raise TypeError(f"h must be a floating point tensor of shape [T, H={self.embed_dim}], got dtype {h.dtype}")
        if h.dim() != 2 or h.shape[-1] != self.embed_dim or h.shape[0] == 0:
            raise ValueError(f"h must have shape [T, H={self.embed_dim}] with T >= 1, got {tuple(h.shape)}")
        if not bool(torch.isfinite(h).all()):
            raise ValueError(f"h contains NaN or inf values; expected a finite [T, H={self.embed_dim}] embedding")
        return h

    def raw(self, h: torch.Tensor) -> torch.Tensor:
        """Network outputs ``[T, 1, num_params]`` (the points singleton added)."""
        return self.net(self.check(h))[:, None, :]

    def distribution(self, raw: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        """``q(z_t | h_t)``: batch shape ``[T, 1]``, event shape ``[D]``, from ``h [T, H]``."""
        return self.distribution(self.raw(h))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, latent_dim={self.latent_dim}, hidden={self.hidden}"
