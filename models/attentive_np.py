"""``AttentiveNP``: the Attentive Neural Process (Kim et al. 2019), latent or conditional, as a Pyro model.

Deterministic path: per-point values ``v_n = SA^L(e([x_n, y_n]))`` (masked self-attention over the context),
then multi-head cross-attention from each input, ``r*(x) = MHA(q(x), q(x_C), v; mask)`` with a shared
query/key MLP ``q``. Latent path (``latent=True``): ``z_t ~ N(0, I_D)`` with the guide
``q(z_t | D_t)`` a set encoder with ``L`` self-attention blocks and mean pooling. Decoder:
``y ~ N(mu([x, r*(x), z]), sigma([x, r*(x), z])^2)``. ``latent=False`` is the conditional form (no task
latent, maximum likelihood of the targets). Shared model, guide and losses: :mod:`models._np_family`.

A known failure of the latent form: with a deterministic path strong enough to fit the targets, the
ELBO's KL term pushes ``q(z | D)`` onto the prior and the decoder learns to ignore ``z`` (the latent path
then carries no information; ``benchmarks/np_gp.py`` measures ``KL(q || p)`` and the predictive change
between prior and posterior draws).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from pyro_meta.data.batch import TaskBatch
from pyro_meta.nn import AttentionBlock, MultiHeadAttention
from pyro_meta.nn.mlp import module_mlp

from ._np_family import NPFamilyModel, _widths

__all__ = ["AttentiveNP"]


class AttentiveNP(NPFamilyModel):
    """Attentive NP: self-attention over the context, cross-attention from the inputs, an optional latent path.

    Parameters
    ----------
    x_dim, y_dim : int
        Input and output sizes ``Dx``, ``Dy``.
    hidden : int or sequence of int
        Widths of the hidden layers of every MLP (an int: ``num_layers`` of it); the last, ``H``, is the
        width of the attention layers and of ``r*``.
    num_layers : int
        Hidden layers per MLP when ``hidden`` is an int.
    num_heads : int
        Heads of every attention layer (``H`` must be a multiple).
    num_self_attention : int
        Self-attention blocks over the context in each path (Kim et al.: 2).
    latent : bool
        Latent form (a task latent ``z_t``) or conditional form.
    latent_dim : int
        Size ``D`` of ``z_t`` (latent form).
    objective : "elbo" | "np" (latent form), "ml" (conditional form), optional
        Meta-training loss; default ``"elbo"`` / ``"ml"``.
    min_std, min_latent_std : float
        Lower bounds of the predictive scale and of the guide's scale.
    activation : "relu" | "silu" | "tanh" | "gelu"
        Nonlinearity of every MLP.
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        hidden: Union[int, Sequence[int]] = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        num_self_attention: int = 2,
        latent: bool = True,
        latent_dim: int = 16,
        objective: Optional[str] = None,
        min_std: float = 0.01,
        min_latent_std: float = 1e-3,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self._setup(x_dim, y_dim, latent, latent_dim, objective, min_std, min_latent_std, activation)
        widths = _widths(hidden, num_layers)
        if isinstance(num_self_attention, bool) or not isinstance(num_self_attention, int) or num_self_attention < 0:
            raise ValueError(f"num_self_attention must be a non-negative int, got {num_self_attention!r}")
        H = widths[-1]
        if H % num_heads:
            raise ValueError(f"hidden: the last width ({H}) must be a multiple of num_heads ({num_heads})")
        self.num_heads, self.num_self_attention = num_heads, num_self_attention
        self.value_encoder = module_mlp([x_dim + y_dim] + widths, activation)
        self.self_attention = nn.ModuleList(
            AttentionBlock(H, num_heads, activation=activation) for _ in range(num_self_attention)
        )
        self.query_encoder = module_mlp([x_dim, H, H], activation)
        self.cross_attention = MultiHeadAttention(H, H, H, num_heads)
        self._build_head(x_dim + H, widths, widths, num_self_attention=num_self_attention, num_heads=num_heads)

    def encode_context(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(keys [T, Nc, H], values [T, Nc, H], mask [T, Nc])`` of the context set."""
        mask = batch.context_mask
        v = self.value_encoder(torch.cat([batch.context_x, batch.context_y], -1))
        for block in self.self_attention:
            v = block(v, mask=mask)
        return self.query_encoder(batch.context_x), v, mask

    def features(self, state: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``[x, r*(x)] [T, N, Dx + H]``: cross-attention from ``x [T, N, Dx]`` to the context."""
        keys, values, mask = state
        return torch.cat([x, self.cross_attention(self.query_encoder(x), keys, values, mask)], -1)
