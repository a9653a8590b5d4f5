"""Batched neural building blocks for meta-learners.

Functional networks, weights as one flat tensor ``phi [..., T, P]`` per task and draw, evaluated
without a loop over tasks: :class:`FunctionalMLP` (batched matmuls) and :func:`inner_loop`
(differentiable gradient steps on such weights).

Padded sets carry a bool mask ``[T, N]`` (True = real point): :func:`masked_mean`.
"""

from .adaptation import inner_loop
from .masking import masked_mean
from .mlp import FunctionalMLP

__all__ = ["FunctionalMLP", "inner_loop", "masked_mean"]
