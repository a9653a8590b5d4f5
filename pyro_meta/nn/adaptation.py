"""``inner_loop``: differentiable gradient steps on batched weights, the adaptation of gradient-based meta-learners.

:func:`inner_loop` runs gradient steps on tensors such as per-task weights ``phi [..., T, P]``
with ``torch.autograd.grad`` (second order through ``create_graph=True``, or first order).
Pyro's ``SVI.step`` is not differentiable, so inner loops are written with autograd directly.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

__all__ = ["inner_loop"]

Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]


def inner_loop(
    loss_fn: Callable[..., torch.Tensor],
    params: Tensors,
    steps: int,
    lr: Union[float, torch.Tensor, Sequence[Union[float, torch.Tensor]]],
    first_order: bool = False,
    create_graph: Optional[bool] = None,
) -> Tensors:
    """``steps`` gradient-descent steps ``p <- p - lr * grad_p sum(loss_fn(*p))``, differentiable.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(*params) -> losses``, e.g. per-task losses ``[..., T]``. The step uses the
        gradient of their sum: tasks do not interact, so every task moves by its own gradient.
    params : Tensor or sequence of Tensors
        Starting point, e.g. ``theta`` expanded to ``[T, P]``.
    steps : int
        Number of steps ``K >= 0``.
    lr : float, Tensor or a sequence of them (one per param)
        Step sizes; tensors broadcast against their param (scalar, ``[P]``...), and may be
        meta-learned (they stay in the graph).
    first_order : bool
        Drop second derivatives (first-order MAML): the gradients are detached, the result
        still depends on ``params`` through the identity path.
    create_graph : bool, optional
        Keep the graph of every step so that the result is twice differentiable. Default
        ``not first_order`` when any param or lr requires grad, otherwise False (inference).

    Returns
    -------
    The adapted params (a Tensor if ``params`` was one, otherwise a tuple).
    """
    single = isinstance(params, torch.Tensor)
    ps = [params] if single else list(params)
    if not ps or not all(isinstance(p, torch.Tensor) for p in ps):
        raise TypeError("params must be a Tensor or a non-empty sequence of Tensors")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(ps)
    if len(lrs) != len(ps):
        raise ValueError(f"lr must be one value or one per param ({len(ps)}), got {len(lrs)}")
    if steps == 0:
        return ps[0] if single else tuple(ps)
    with torch.enable_grad():
        tracked = any(p.requires_grad for p in ps) or any(isinstance(a, torch.Tensor) and a.requires_grad for a in lrs)
        if create_graph is None:
            create_graph = tracked and not first_order
        for _ in range(steps):
            ps = [p if p.requires_grad else p.detach().requires_grad_(True) for p in ps]
            loss = loss_fn(*ps).sum()
            grads = torch.autograd.grad(loss, ps, create_graph=bool(create_graph))
            ps = [p - a * g for p, a, g in zip(ps, lrs, grads)]
            if not create_graph and not tracked:
                ps = [p.detach() for p in ps]
    return ps[0] if single else tuple(ps)
