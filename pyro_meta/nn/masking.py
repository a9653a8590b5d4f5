"""Padded sets: masked pooling and the checks shared by the set layers.

Tasks hold different numbers of points, so a batch pads every set to the longest one and carries a
bool mask ``[T, N]`` (True = real point). Set layers must give padded points no weight: adding
padding never changes a result.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["masked_mean"]


def masked_mean(h: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over the real points of a set: ``r = sum_n m_n h_n / max(1, sum_n m_n)``.

    Parameters
    ----------
    h : Tensor ``[..., T, N, H]``
        Per-point values.
    mask : bool Tensor ``[..., T, N]`` or None
        True for real points; leading dims broadcast against ``h``'s. ``None``: every point is real.

    Returns
    -------
    Tensor ``[..., T, H]``; zeros for a set with no real point.
    """
    if not isinstance(h, torch.Tensor) or h.dim() < 2:
        raise ValueError(f"h must be a tensor [..., T, N, H], got {_describe(h)}")
    if mask is None:
        return h.mean(-2) if h.shape[-2] > 0 else h.new_zeros(h.shape[:-2] + h.shape[-1:])
    _check_mask(mask, h.shape[:-1], "mask")
    m = mask.to(h.dtype)[..., None]
    return (h * m).sum(-2) / m.sum(-2).clamp_min(1.0)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check_mask(mask: object, points_shape: Tuple[int, ...], name: str = "mask") -> None:
    """``TypeError``/``ValueError`` unless ``mask`` is a bool ``[..., T, N]`` broadcastable to ``points_shape``."""
    expected = "[..., T, N]"
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor {expected} (True = real point), got {_describe(mask)}")
    points_shape = tuple(points_shape)
    ok = mask.dim() >= 1 and mask.shape[-1] == points_shape[-1]
    if ok:
        try:
            ok = torch.broadcast_shapes(mask.shape, points_shape) == torch.Size(points_shape)
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            f"{name} must have shape {expected} matching the points {list(points_shape)}, got {list(mask.shape)}"
        )


def _check_points(x: object, name: str, dim: Optional[int] = None, min_dims: int = 3) -> torch.Tensor:
    """``TypeError``/``ValueError`` unless ``x`` is a finite floating tensor ``[..., T, N, dim]``."""
    last = "D" if dim is None else str(dim)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor [..., T, N, {last}], got {_describe(x)}")
    if x.dim() < min_dims or (dim is not None and x.shape[-1] != dim):
        raise ValueError(f"{name} must have shape [..., T, N, {last}], got {list(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has NaN or inf entries (pad sets with finite values and mask them)")
    return x
