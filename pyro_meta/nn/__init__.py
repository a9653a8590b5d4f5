"""Batched neural building blocks for meta-learners.

Shapes: ``T`` tasks, ``N`` points (or images) per task, leading ``...`` draw or particle dims that
broadcast; padded sets carry a bool mask ``[T, N]`` (True = real point).

* Functional networks, weights as one flat tensor ``phi [..., T, P]`` per task and draw, evaluated
  without a loop over tasks: :class:`FunctionalMLP` (batched matmuls), :class:`FunctionalConv4`
  (the few-shot Conv-4 image backbone, grouped convolutions) and :func:`inner_loop`
  (differentiable gradient steps on such weights).
* Set layers, ordinary ``nn.Module`` objects with masks: :class:`MultiHeadAttention`,
  :class:`AttentionBlock` (self-attention over a set, cross-attention from targets to a context),
  :class:`SetEncoder` (a set to one embedding per task), :func:`masked_mean`, and
  :class:`ContextTargetTransformer` (transformer layers where every token attends to the context only:
  the encoder of a Transformer Neural Process).
"""

from .adaptation import inner_loop
from .attention import AttentionBlock, MultiHeadAttention
from .conv import FunctionalConv4
from .masking import masked_mean
from .mlp import FunctionalMLP
from .set_encoder import SetEncoder
from .transformer import ContextTargetTransformer

__all__ = [
    "AttentionBlock",
    "ContextTargetTransformer",
    "FunctionalConv4",
    "FunctionalMLP",
    "MultiHeadAttention",
    "SetEncoder",
    "inner_loop",
    "masked_mean",
]
