"""Masked multi-head attention over padded sets, and a transformer block built on it.

Shapes: queries ``q [..., T, Nq, Dq]``, keys and values ``k, v [..., T, Nk, Dkv]``, key mask
``[..., T, Nk]`` (True = real point); leading draw dims broadcast between all of them. Padded keys get
zero weight, so adding padded points changes nothing; a query whose keys are all padded (an empty
context) gets zeros, not NaN. These are the layers of attentive and transformer Neural Processes
(Kim et al. 2019; Nguyen & Grover 2022) and of Set Transformer encoders (Lee et al. 2019).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .masking import _check_mask, _check_points
from .mlp import module_mlp

__all__ = ["AttentionBlock", "MultiHeadAttention"]


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with ``num_heads`` heads and a key mask.

    ``head_i = softmax_k(Q_i K_i^T / sqrt(d_h) + log m) V_i``, ``out = concat_i(head_i) W_o + b_o``, with
    ``Q = q W_q + b_q``, ``K = k W_k + b_k``, ``V = v W_v + b_v``, ``d_h = dim / num_heads`` and ``m`` the key
    mask; the output of a query with no real key is 0. The same numbers as
    ``torch.nn.MultiheadAttention(dim, num_heads, kdim=dim_kv, vdim=dim_kv, batch_first=True)`` with
    ``key_padding_mask=~mask`` (when ``dim_q == dim``), without its NaN rows.

    Parameters
    ----------
    dim_q : int
        Size ``Dq`` of a query.
    dim_kv : int
        Size ``Dkv`` of a key and of a value.
    dim : int
        Size of the projections and of the output; a multiple of ``num_heads``.
    num_heads : int
        Number of heads.
    """

    def __init__(self, dim_q: int, dim_kv: int, dim: int, num_heads: int = 1) -> None:
        super().__init__()
        for name, value in (("dim_q", dim_q), ("dim_kv", dim_kv), ("dim", dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim % num_heads:
            raise ValueError(f"dim must be a multiple of num_heads, got dim={dim}, num_heads={num_heads}")
        self.dim_q, self.dim_kv, self.dim, self.num_heads = dim_q, dim_kv, dim, num_heads
        self.q_proj = nn.Linear(dim_q, dim)
        self.k_proj = nn.Linear(dim_kv, dim)
        self.v_proj = nn.Linear(dim_kv, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Attend from ``q [..., T, Nq, Dq]`` to ``k, v [..., T, Nk, Dkv]`` with key mask ``[..., T, Nk]``.

        Returns ``[..., T, Nq, dim]``; leading dims of ``q``, ``k`` and ``mask`` broadcast.
        """
        _check_points(q, "q", self.dim_q)
        _check_points(k, "k", self.dim_kv)
        _check_points(v, "v", self.dim_kv)
        if v.shape[:-1] != k.shape[:-1]:
            raise ValueError(
                f"v must have the shape of k [..., T, Nk, {self.dim_kv}], got {list(v.shape)} and {list(k.shape)}"
            )
        try:
            lead = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]))
        except RuntimeError:
            raise ValueError(
                f"q [..., T, Nq, Dq] and k [..., T, Nk, Dkv] must have broadcastable leading dims, "
                f"got {list(q.shape)} and {list(k.shape)}"
            ) from None
        if mask is not None:
            _check_mask(mask, lead + (k.shape[-2],), "mask")
        H, dh = self.num_heads, self.dim // self.num_heads
        Q = self.q_proj(q).unflatten(-1, (H, dh)).transpose(-2, -3)  # [..., T, H, Nq, dh]
        K = self.k_proj(k).unflatten(-1, (H, dh)).transpose(-2, -3)  # [..., T, H, Nk, dh]
        V = self.v_proj(v).unflatten(-1, (H, dh)).transpose(-2, -3)
        scores = Q @ K.transpose(-1, -2) / math.sqrt(dh)  # [..., T, H, Nq, Nk]
        if mask is None:
            weights = torch.softmax(scores, -1)
        else:
            # a finite fill, not -inf: padded keys get weight exp(min - max) = 0 exactly, and a row with no real
            # key is uniform (not NaN); its output is set to 0 below
            weights = torch.softmax(scores.masked_fill(~mask[..., None, None, :], torch.finfo(scores.dtype).min), -1)
        out = self.out_proj((weights @ V).transpose(-2, -3).flatten(-2))  # [..., T, Nq, dim]
        if mask is not None:
            out = out * mask.any(-1)[..., None, None]  # no real key: 0, not the output bias
        return out

    def extra_repr(self) -> str:
        return f"dim_q={self.dim_q}, dim_kv={self.dim_kv}, dim={self.dim}, num_heads={self.num_heads}"


class AttentionBlock(nn.Module):
    """Transformer block: masked multi-head attention, residual, LayerNorm, MLP, residual, LayerNorm.

    Post-norm (``norm_first=False``, as Set Transformer's MAB and ``nn.TransformerEncoderLayer``)::

        h = LN_1(x + MHA(x, c, c; mask));   out = LN_2(h + MLP(h))

    pre-norm (``norm_first=True``): ``h = x + MHA(LN_1(x), c, c; mask)``, ``out = h + MLP(LN_2(h))``.
    Self-attention over a set when ``context`` is None (``c = x``, or ``LN_1(x)`` pre-norm; ``mask`` is then
    the set's own mask), cross-attention from the points ``x`` (e.g. targets) to a context set ``c``
    otherwise. Outputs at padded positions of ``x`` are finite but meaningless: mask them downstream.

    Parameters
    ----------
    dim : int
        Size ``D`` of the points ``x`` and of the output.
    num_heads : int
        Attention heads (``dim`` must be a multiple).
    dim_kv : int, optional
        Size of the context points (default ``dim``).
    hidden : int, optional
        Width of the MLP's hidden layer (default ``2 * dim``).
    activation : "relu" | "gelu" | "silu" | "tanh"
        The MLP's nonlinearity.
    norm_first : bool
        Pre-norm instead of post-norm.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        dim_kv: Optional[int] = None,
        hidden: Optional[int] = None,
        activation: str = "relu",
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, dim if dim_kv is None else dim_kv, dim, num_heads)
        self.mlp = module_mlp((dim, 2 * dim if hidden is None else hidden, dim), activation)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm_first = bool(norm_first)

    def forward(
        self, x: torch.Tensor, context: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Points ``x [..., T, Nq, D]``, ``context [..., T, Nk, Dkv]`` or None (self-attention), mask ``[..., T, Nk]``.

        Returns ``[..., T, Nq, D]``.
        """
        _check_points(x, "x", self.attention.dim_q)
        if context is not None:
            _check_points(context, "context", self.attention.dim_kv)
        if self.norm_first:
            h = self.norm1(x)
            c = h if context is None else context
            h = x + self.attention(h, c, c, mask)
            return h + self.mlp(self.norm2(h))
        c = x if context is None else context
        h = self.norm1(x + self.attention(x, c, c, mask))
        return self.norm2(h + self.mlp(h))
