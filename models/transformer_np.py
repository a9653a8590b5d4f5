"""``TransformerNP``: the Transformer Neural Process TNP-D (Nguyen & Grover 2022) as a Pyro model.

Tokens ``e([x_n, y_n])`` for the context and ``e([x_n, 0])`` for the inputs to predict (``e`` an MLP),
``L`` transformer layers in which every token attends to the context tokens only (the target-to-context
mask; :class:`pyro_meta.nn.ContextTargetTransformer`), and a diagonal Gaussian head on each target token:
``y_tn ~ N(mu(h_tn), sigma(h_tn)^2)``. Conditional by default (TNP-D has no latent), trained by maximum
likelihood of the targets.

``latent=True`` is our addition, not in the paper: a global task latent ``z_t ~ N(0, I_D)`` concatenated to
every target token before the head, ``y_tn ~ N(mu([h_tn, z_t]), sigma([h_tn, z_t])^2)``, with a mean-pooled
set-encoder guide ``q(z_t | D_t)`` (one self-attention block), trained with the ELBO or the NP objective as
``NeuralProcess`` -- so that the transformer's predictive can be sampled by NUTS over ``z_t`` too.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from pyro_meta.data.batch import TaskBatch
from pyro_meta.nn import ContextTargetTransformer
from pyro_meta.nn.mlp import module_mlp

from ._np_family import NPFamilyModel, _positive_int

__all__ = ["TransformerNP"]


class TransformerNP(NPFamilyModel):
    """TNP-D: a transformer over context and target tokens with the target-to-context mask.

    Parameters
    ----------
    x_dim, y_dim : int
        Input and output sizes ``Dx``, ``Dy``.
    dim : int
        Token size (TNP-D: 64).
    num_layers : int
        Transformer layers (TNP-D: 6).
    num_heads : int
        Attention heads (TNP-D: 4).
    dim_feedforward : int
        Width of the layers' feed-forward part and of the head's hidden layer (TNP-D: 128).
    embed_depth : int
        Linear layers of the token embedding MLP (TNP-D: 4).
    latent : bool
        Add a global task latent (see the module docstring); default False (TNP-D).
    latent_dim : int
        Size ``D`` of ``z_t`` when ``latent``.
    objective : "ml" (conditional), "elbo" | "np" (latent), optional
        Meta-training loss; default ``"ml"`` / ``"elbo"``.
    min_std, min_latent_std : float
        Lower bounds of the predictive scale and of the guide's scale (TNP-D's head is ``exp`` unbounded).
    activation : "relu" | "gelu" | "silu" | "tanh"
        Nonlinearity of the embedding, the layers' feed-forward parts and the head (TNP-D: ReLU).
    norm_first : bool
        Pre-norm transformer layers (TNP-D: post-norm, torch's default).
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        dim: int = 64,
        num_layers: int = 6,
        num_heads: int = 4,
        dim_feedforward: int = 128,
        embed_depth: int = 4,
        latent: bool = False,
        latent_dim: int = 16,
        objective: Optional[str] = None,
        min_std: float = 0.01,
        min_latent_std: float = 1e-3,
        activation: str = "relu",
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self._setup(x_dim, y_dim, latent, latent_dim, objective, min_std, min_latent_std, activation)
        for name, value in (("dim", dim), ("dim_feedforward", dim_feedforward), ("num_heads", num_heads)):
            _positive_int(name, value)
        if _positive_int("embed_depth", embed_depth) < 2:
            raise ValueError(f"embed_depth must be >= 2 (linear layers of the embedding), got {embed_depth}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
        self.dim = dim
        self.embedder = module_mlp([x_dim + y_dim] + [dim] * embed_depth, activation)
        self.encoder = ContextTargetTransformer(
            dim, num_layers, num_heads, hidden=dim_feedforward, activation=activation, norm_first=norm_first
        )
        self._build_head(dim, [dim_feedforward], [dim, dim], num_self_attention=1, num_heads=num_heads)

    def encode_context(self, batch: TaskBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [T, Nc, dim], mask [T, Nc])`` of the context set ``[x, y]``."""
        return self.embedder(torch.cat([batch.context_x, batch.context_y], -1)), batch.context_mask

    def features(self, state: Tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Target tokens ``e([x, 0])`` after the transformer, ``[T, N, dim]``."""
        tokens, mask = state
        query = self.embedder(torch.cat([x, x.new_zeros(x.shape[:-1] + (self.y_dim,))], -1))
        return self.encoder(tokens, query, mask)
