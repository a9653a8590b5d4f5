"""Batched neural building blocks for meta-learners.

Functional networks, weights as one flat tensor ``phi [..., T, P]`` per task and draw, evaluated
without a loop over tasks: :class:`FunctionalMLP` (batched matmuls), :class:`FunctionalConv4`
(the few-shot Conv-4 image backbone, grouped convolutions) and :func:`inner_loop` (differentiable
gradient steps on such weights).

Set layers, ordinary ``nn.Module``\\ s; padded sets carry a bool mask ``[T, N]`` (True = real point):
:class:`MultiHeadAttention`, :class:`AttentionBlock` (self-attention over a set, cross-attention from
targets to a context), :func:`masked_mean`.
"""

from .adaptation import inner_loop
from .attention import AttentionBlock, MultiHeadAttention
from .conv import FunctionalConv4
from .masking import masked_mean
from .mlp import FunctionalMLP

__all__ = ["AttentionBlock", "FunctionalConv4", "FunctionalMLP", "MultiHeadAttention", "inner_loop", "masked_mean"]
