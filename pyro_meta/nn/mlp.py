"""``FunctionalMLP``: a multilayer perceptron whose weights are one flat tensor with leading task (and particle) dims.

Gradient-based meta-learners (MAML, ABML, BMAML, PLATIPUS) hold a different copy of the base
network's weights per task -- and per particle or posterior draw. :class:`FunctionalMLP` keeps
those weights in one flat tensor ``phi [..., T, P]`` and evaluates every copy at once by batched
matrix products (no Python loop over tasks); :func:`~pyro_meta.nn.inner_loop` runs gradient steps
on such tensors.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["FunctionalMLP"]

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "elu": nn.functional.elu, "sigmoid": torch.sigmoid}
#: module nonlinearities of the set layers' ordinary (non-functional) MLPs
MODULE_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class FunctionalMLP(nn.Module):
    """A multilayer perceptron whose weights are an argument: ``f(x; phi)`` for a flat ``phi``.

    Layer ``l`` maps ``h -> act(h @ W_l + b_l)`` (no activation after the last layer), with
    ``W_l [d_l, d_{l+1}]`` and ``b_l [d_{l+1}]`` stored one after the other in ``phi`` (``P``
    numbers in all, :attr:`num_params`). The module itself has no parameters.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths ``(Dx, h_1, ..., Dy)``, at least two.
    activation : "relu" | "tanh" | "elu" | "sigmoid" | callable
        Hidden-layer nonlinearity.

    Examples
    --------
    >>> net = FunctionalMLP((1, 40, 40, 1))
    >>> phi = net.init_params().expand(8, -1)            # [T, P], one copy per task
    >>> net(torch.randn(8, 5, 1), phi).shape              # x [T, N, Dx] -> [T, N, Dy]
    torch.Size([8, 5, 1])
    """

    def __init__(
        self, sizes: Sequence[int], activation: Union[str, Callable[[torch.Tensor], torch.Tensor]] = "relu"
    ) -> None:
        super().__init__()
        sizes = tuple(sizes)
        if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
            raise ValueError(f"sizes must be at least two positive ints (Dx, ..., Dy), got {sizes!r}")
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)} or a callable, got {activation!r}")
            self.activation_name = activation
            self._act = _ACTIVATIONS[activation]
        elif callable(activation):
            self.activation_name = getattr(activation, "__name__", type(activation).__name__)
            self._act = activation
        else:
            raise TypeError(f"activation must be a str or a callable, got {type(activation).__name__}")
        self.sizes = sizes
        self._slices: List[Tuple[int, int, int, int]] = []  # (offset of W, d_in, d_out, offset of b)
        offset = 0
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            self._slices.append((offset, d_in, d_out, offset + d_in * d_out))
            offset += d_in * d_out + d_out
        self.num_params = offset
        self._split_sizes = [n for _, d_in, d_out, _ in self._slices for n in (d_in * d_out, d_out)]

    @property
    def in_features(self) -> int:
        return self.sizes[0]

    @property
    def out_features(self) -> int:
        return self.sizes[-1]

    def init_params(self, num: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A flat weight vector ``[P]`` (or ``num`` independent ones, ``[num, P]``).

        ``nn.Linear``'s default scheme: ``W, b ~ U(-1/sqrt(d_in), 1/sqrt(d_in))``.
        """
        lead = () if num is None else (int(num),)
        parts = []
        for _, d_in, d_out, _ in self._slices:
            bound = 1.0 / math.sqrt(d_in)
            parts.append((torch.rand(lead + (d_in * d_out + d_out,), generator=generator) * 2 - 1) * bound)
        return torch.cat(parts, -1)

    def unflatten(self, flat: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """``phi [..., P]`` -> ``[(W_l [..., d_l, d_{l+1}], b_l [..., d_{l+1}]), ...]`` (views where possible)."""
        self._check_flat(flat)
        lead = flat.shape[:-1]
        # one split (its backward is one cat) rather than 2L slices (each backward a zero-padded [..., P])
        parts = flat.split(self._split_sizes, -1)
        return [
            (parts[2 * i].reshape(lead + (d_in, d_out)), parts[2 * i + 1])
            for i, (_, d_in, d_out, _) in enumerate(self._slices)
        ]

    def flatten(self, layers: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Inverse of :meth:`unflatten`: ``[(W [..., d_in, d_out], b [..., d_out]), ...]`` -> ``[..., P]``."""
        if len(layers) != len(self._slices):
            raise ValueError(f"layers must hold {len(self._slices)} (W, b) pairs, got {len(layers)}")
        parts = []
        for (W, b), (_, d_in, d_out, _) in zip(layers, self._slices):
            if tuple(W.shape[-2:]) != (d_in, d_out) or b.shape[-1] != d_out:
                raise ValueError(
                    f"layers: expected W [..., {d_in}, {d_out}] and b [..., {d_out}], got "
                    f"{tuple(W.shape)} and {tuple(b.shape)}"
                )
            parts += [W.reshape(W.shape[:-2] + (d_in * d_out,)), b]
        return torch.cat(_broadcast_lead(parts), -1)

    def forward(self, x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """``f(x; phi)``: ``x [..., T, N, Dx]`` with weights ``phi [..., T, P]`` or ``[..., T, 1, P]`` -> ``[..., T, N, Dy]``.

        The ``[..., T, 1, P]`` form is a task latent with its singleton points dim (Pyro's
        task plate at dim -2); it is recognised by ``phi.shape[-2] == 1`` and
        ``phi.shape[-3] == x.shape[-3]`` (``T``). Leading dims of ``x`` and ``phi`` (draws,
        particles) broadcast against each other.
        """
        if x.dim() < 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape [..., T, N, {self.in_features}], got {tuple(x.shape)}")
        self._check_flat(flat)
        if flat.dim() >= 3 and flat.shape[-2] == 1 and flat.shape[-3] == x.shape[-3]:
            flat = flat.squeeze(-2)
        if flat.dim() < 2:
            raise ValueError(f"phi must have a task dim, [..., T, P]; got {tuple(flat.shape)}")
        h = x
        last = len(self._slices) - 1
        fast = flat.dim() == 2 and x.dim() == 3
        for i, (W, b) in enumerate(self.unflatten(flat)):
            if fast:
                h = torch.baddbmm(b.unsqueeze(-2), h.expand(W.shape[0], -1, -1), W)
            else:
                h = torch.matmul(h, W) + b.unsqueeze(-2)
            if i < last:
                h = self._act(h)
        return h

    def _check_flat(self, flat: torch.Tensor) -> None:
        if not isinstance(flat, torch.Tensor):
            raise TypeError(f"phi must be a tensor [..., {self.num_params}], got {type(flat).__name__}")
        if flat.dim() < 1 or flat.shape[-1] != self.num_params:
            raise ValueError(f"phi must have shape [..., {self.num_params}] (num_params), got {tuple(flat.shape)}")

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, activation={self.activation_name}, num_params={self.num_params}"


def _broadcast_lead(parts: List[torch.Tensor]) -> List[torch.Tensor]:
    lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return [p.expand(lead + p.shape[-1:]) for p in parts]


def module_mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """An ordinary MLP ``Linear -> act -> ... -> Linear`` over the last dim (no activation after the last layer).

    ``sizes = (d_0, ..., d_L)``; ``activation`` one of :data:`MODULE_ACTIVATIONS`.
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(f"sizes must be at least two positive ints, got {sizes!r}")
    if activation not in MODULE_ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(MODULE_ACTIVATIONS)}, got {activation!r}")
    layers: List[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(MODULE_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)
