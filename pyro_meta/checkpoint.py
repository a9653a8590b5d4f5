"""Atomic checkpoints of a model (and optimizer), loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Optional, Union

import torch

__all__ = ["load_checkpoint", "save_checkpoint"]

PathLike = Union[str, os.PathLike]


def save_checkpoint(
    path: PathLike,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> None:
    """Write ``{"model": state_dict, "optimizer": state_dict, **extra}`` atomically.

    The file is written to a temporary file in the same folder and moved over ``path``
    with ``os.replace``, so an interrupt never leaves a half-written checkpoint. ``extra``
    must hold only tensors, numbers, strings and containers of them (``weights_only``).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    state.update(extra or {})
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(
    path: PathLike, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None
) -> Dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` into ``model`` (and ``optimizer``).

    Returns the whole state dict (``step``, ``losses``, ... as saved).
    """
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    return state
