"""``AmortizedGuide``: a set encoder over a task's observed points and a head, as a Pyro guide in one line."""

from __future__ import annotations

from typing import Callable, Optional

import pyro
import torch
from torch import nn

from ..data.batch import TaskBatch
from ..model import task_plate

__all__ = ["AmortizedGuide", "points"]


def points(batch: TaskBatch) -> "tuple[torch.Tensor, torch.Tensor]":
    """A task's observed points as set elements: ``([x, y] [T, N, Dx + Dy], mask [T, N])``.

    Class labels are one-hot encoded (``K`` = the largest label + 1). At training time the observed
    points are the context and the target; at inference time the context only (``batch.observed()``).
    """
    x, y, mask = batch.observed()
    if not y.is_floating_point():
        y = nn.functional.one_hot(y.clamp_min(0), int(y.max()) + 1 if y.numel() else 1).to(x.dtype)
    return torch.cat([x, y], -1), mask


class AmortizedGuide(nn.Module):
    """``q(z_t | observed_t) = head(encoder(observed points of task t))`` for one task latent site.

    ``self.guide = AmortizedGuide("z", SetEncoder(1 + 1, 64, 64), FlowHead(64, 8))`` gives a model a
    flow guide (any head of :mod:`pyro_meta.guides`; any set encoder mapping ``[T, N, Din]`` and a mask
    ``[T, N]`` to ``[T, H]``, e.g. :class:`pyro_meta.nn.SetEncoder` with mean or attention pooling).

    Parameters
    ----------
    site : str
        The task latent's site name in the model (event shape ``[D]``: the head's ``latent_dim``).
    encoder : nn.Module
        ``encoder(points [T, N, Din], mask [T, N]) -> h [T, H]``.
    head : nn.Module
        ``head(h [T, H])`` -> a distribution of batch ``[T, 1]``, event ``[D]``.
    inputs : callable, optional
        ``inputs(batch) -> (points, mask)``; default :func:`points` (``[x, y]`` of the observed points).
    """

    def __init__(
        self,
        site: str,
        encoder: nn.Module,
        head: nn.Module,
        inputs: Optional[Callable[[TaskBatch], "tuple[torch.Tensor, torch.Tensor]"]] = None,
    ) -> None:
        super().__init__()
        if not isinstance(site, str) or not site:
            raise TypeError(f"site must be the name of a task latent site, got {site!r}")
        for name, module in (("encoder", encoder), ("head", head)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(module).__name__}")
        self.site, self.encoder, self.head = site, encoder, head
        self.inputs = points if inputs is None else inputs

    def forward(self, batch: TaskBatch) -> torch.Tensor:
        h = self.encoder(*self.inputs(batch))
        with task_plate(batch):
            return pyro.sample(self.site, self.head(h))
