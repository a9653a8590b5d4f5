"""Batched neural building blocks for meta-learners.

Functional networks, weights as one flat tensor ``phi [..., T, P]`` per task and draw, evaluated
without a loop over tasks: :class:`FunctionalMLP` (batched matmuls) and :func:`inner_loop`
(differentiable gradient steps on such weights).
"""

from .adaptation import inner_loop
from .mlp import FunctionalMLP

__all__ = ["FunctionalMLP", "inner_loop"]
