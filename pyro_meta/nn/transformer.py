"""``ContextTargetTransformer``: transformer layers in which every token attends to the context set only.

The encoder of the Transformer Neural Process TNP-D (Nguyen & Grover 2022): context tokens ``[x, y]`` and
target tokens ``[x, 0]`` go through one stack of transformer layers with the *target-to-context* mask
(every token, context or target, attends to the context tokens and to nothing else). Since no token
attends to a target, each target is processed independently given the context: the stack is computed
as self-attention over the context and cross-attention from the targets to the context of the same
layer, with the same weights -- the numbers of ``torch.nn.TransformerEncoder`` with that mask on the
concatenated sequence, at ``O(Nc^2 + Nc Nt)`` instead of ``O((Nc + Nt)^2)``, and with padded context
points masked.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import AttentionBlock
from .masking import _check_mask, _check_points

__all__ = ["ContextTargetTransformer"]


class ContextTargetTransformer(nn.Module):
    """``num_layers`` transformer blocks; context tokens attend to the context, target tokens to the context.

    Layer ``l`` (post-norm, as ``nn.TransformerEncoderLayer``; :class:`AttentionBlock`)::

        c_{l+1} = Block_l(c_l; keys c_l, mask)        t_{l+1} = Block_l(t_l; keys c_l, mask)

    (pre-norm: the keys are ``LN_1(c_l)``, as in a pre-norm encoder layer). Padded context tokens get no
    weight; a task with no real context point gives finite outputs that depend on the targets only.

    Parameters
    ----------
    dim : int
        Token size ``D``.
    num_layers : int
        Transformer layers.
    num_heads : int
        Attention heads (``dim`` must be a multiple).
    hidden : int, optional
        Width of each block's feed-forward layer (default ``2 * dim``).
    activation : "relu" | "gelu" | "silu" | "tanh"
        The feed-forward nonlinearity.
    norm_first : bool
        Pre-norm blocks instead of post-norm.
    """

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int = 4,
        hidden: Optional[int] = None,
        activation: str = "relu",
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        self.dim, self.num_layers, self.norm_first = dim, num_layers, bool(norm_first)
        self.blocks = nn.ModuleList(
            AttentionBlock(dim, num_heads, hidden=hidden, activation=activation, norm_first=norm_first)
            for _ in range(num_layers)
        )

    def forward(self, context: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Context tokens ``[..., T, Nc, D]``, target tokens ``[..., T, Nt, D]``, context mask ``[..., T, Nc]``.

        Returns the target tokens after the last layer, ``[..., T, Nt, D]`` (leading dims broadcast).
        The context tokens of the last layer are not needed by any target and are not computed.
        """
        _check_points(context, "context", self.dim)
        _check_points(target, "target", self.dim)
        if mask is not None:
            _check_mask(mask, context.shape[:-1], "mask")
        c, t = context, target
        for i, block in enumerate(self.blocks):
            keys = block.norm1(c) if self.norm_first else c
            t = block(t, keys, mask)
            if i + 1 < len(self.blocks):
                c = block(c, mask=mask)
        return t

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_layers={self.num_layers}, norm_first={self.norm_first}"
