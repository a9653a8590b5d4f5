"""``SetEncoder``: a padded set of points per task to one embedding per task.

Deep Sets (Zaheer et al. 2017) with masked mean pooling, or Set Transformer's pooling by multi-head
attention (PMA, Lee et al. 2019), optionally after a stack of masked self-attention blocks (SAB). The
encoder of a Neural Process's latent path or of an amortized guide ``q(z_t | context_t)``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .attention import AttentionBlock
from .masking import _check_mask, _check_points, masked_mean
from .mlp import module_mlp

__all__ = ["SetEncoder"]

POOLINGS = ("mean", "attention")


class SetEncoder(nn.Module):
    """Permutation-invariant encoder ``r_t = rho(pool_n(SAB^L(h(x_tn))))`` of a set with a mask.

    ``h`` is a per-point MLP ``(in_dim, *hidden)``, ``SAB^L`` ``num_self_attention`` self-attention blocks
    over the set (masked), ``pool`` the masked mean ``sum_n m_n h_n / sum_n m_n`` or a learned query attending
    over the real points (PMA: ``AttentionBlock(s, h; mask)`` with a seed ``s [H]``), and ``rho`` the MLP
    ``(H, H, out_dim)``. Padded points change nothing; an empty set (no real point) gives ``rho`` of the
    empty pool (zeros for the mean, ``LN(s + 0)`` for attention) -- finite, independent of the padding.
    With ``pooling="mean"`` and no self-attention this is the encoder of ``NeuralProcess``'s latent path.

    Parameters
    ----------
    in_dim : int
        Size ``Din`` of a point (e.g. ``Dx + Dy`` for ``[x, y]`` pairs).
    hidden : int or sequence of int
        Widths of the per-point MLP's layers (an int: ``num_layers`` layers of it); the last, ``H``, is the
        width of the attention blocks and of the pooled vector.
    out_dim : int
        Size of the task embedding.
    pooling : "mean" | "attention"
        Masked mean pooling or pooling by multi-head attention.
    num_layers : int
        Layers of the per-point MLP when ``hidden`` is an int.
    num_self_attention : int
        Self-attention blocks over the set before pooling.
    num_heads : int
        Heads of every attention block (``H`` must be a multiple).
    activation : "relu" | "gelu" | "silu" | "tanh"
        Nonlinearity of every MLP.

    Examples
    --------
    >>> enc = SetEncoder(3, 32, 8, pooling="attention", num_self_attention=1)
    >>> enc(torch.randn(4, 10, 3), torch.ones(4, 10, dtype=torch.bool)).shape   # x [T, N, Din], mask [T, N]
    torch.Size([4, 8])
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Union[int, Sequence[int]],
        out_dim: int,
        pooling: str = "mean",
        num_layers: int = 2,
        num_self_attention: int = 0,
        num_heads: int = 4,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(num_self_attention, bool) or not isinstance(num_self_attention, int) or num_self_attention < 0:
            raise ValueError(f"num_self_attention must be a non-negative int, got {num_self_attention!r}")
        widths = [hidden] * num_layers if isinstance(hidden, int) and not isinstance(hidden, bool) else list(hidden)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"hidden must be a positive int or a non-empty sequence of them, got {hidden!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        H = widths[-1]
        if (pooling == "attention" or num_self_attention) and H % num_heads:
            raise ValueError(f"hidden: the last width ({H}) must be a multiple of num_heads ({num_heads})")
        self.in_dim, self.out_dim, self.pooling = in_dim, out_dim, pooling
        self.point_mlp = module_mlp([in_dim] + widths, activation)
        self.self_attention = nn.ModuleList(
            AttentionBlock(H, num_heads, activation=activation) for _ in range(num_self_attention)
        )
        if pooling == "attention":
            self.seed = nn.Parameter(torch.randn(H) / H**0.5)
            self.pool_block = AttentionBlock(H, num_heads, activation=activation)
        self.rho = module_mlp([H, H, out_dim], activation)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Points ``x [..., T, N, Din]``, mask ``[..., T, N]`` (True = real, None = all) -> ``[..., T, out_dim]``."""
        _check_points(x, "x", self.in_dim)
        if mask is not None:
            _check_mask(mask, x.shape[:-1], "mask")
        h = self.point_mlp(x)  # [..., T, N, H]
        for block in self.self_attention:
            h = block(h, mask=mask)
        if self.pooling == "mean":
            r = masked_mean(h, mask)
        else:
            seed = self.seed.expand(h.shape[:-2] + (1, h.shape[-1]))
            r = self.pool_block(seed, h, mask).squeeze(-2)
        return self.rho(r)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, pooling={self.pooling!r}"
