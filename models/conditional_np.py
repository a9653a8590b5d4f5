"""``ConditionalNP``: the Conditional Neural Process (Garnelo et al. 2018a) as a Pyro model without a task latent.

``r_t = rho(mean_{n in C_t} e([x_tn, y_tn]))`` (a masked mean-pooled set encoder of the context),
``y_tn ~ N(mu([x_tn, r_t]), sigma([x_tn, r_t])^2)`` at the target points, trained by maximum likelihood of
the targets (``loss``: ``-sum_{n in T_t} log p(y_tn | x_tn, C_t)`` per task). The model has no task latent:
``infer(model, batch)`` (``"amortized"``) gives its predictive, latent methods refuse it. See
:mod:`models._np_family` for the shared model, guide and loss.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from pyro_meta.data.batch import TaskBatch
from pyro_meta.nn import SetEncoder

from ._np_family import NPFamilyModel, _widths
from .neural_process import _cat_broadcast

__all__ = ["ConditionalNP"]


class ConditionalNP(NPFamilyModel):
    """Conditional NP: a mean-pooled context embedding ``r_t [T, H]`` and an MLP decoder of ``[x, r_t]``.

    Parameters
    ----------
    x_dim, y_dim : int
        Input and output sizes ``Dx``, ``Dy``.
    hidden : int or sequence of int
        Widths of the hidden layers of the encoder and the decoder (an int: ``num_layers`` of it); the
        last is the size ``H`` of ``r_t``.
    num_layers : int
        Hidden layers per network when ``hidden`` is an int.
    min_std : float
        Lower bound of the predictive scale ``sigma = min_std + (1 - min_std) softplus(.)``.
    activation : "silu" | "relu" | "tanh" | "gelu"
        Nonlinearity of every network.
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        hidden: Union[int, Sequence[int]] = 64,
        num_layers: int = 2,
        min_std: float = 0.01,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        self._setup(x_dim, y_dim, False, 1, None, min_std, 0.0, activation)
        widths = _widths(hidden, num_layers)
        H = widths[-1]
        self.encoder = SetEncoder(x_dim + y_dim, widths, H, pooling="mean", activation=activation)
        self._build_head(x_dim + H, widths, ())

    def encode_context(self, batch: TaskBatch) -> torch.Tensor:
        """``r [T, 1, H]``: the encoder of the context set ``[x, y]`` with its mask."""
        return self.encoder(torch.cat([batch.context_x, batch.context_y], -1), batch.context_mask)[:, None, :]

    def features(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[x, r] [T, N, Dx + H]``."""
        return _cat_broadcast(x, state)
