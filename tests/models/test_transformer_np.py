"""TransformerNP: the contract (TNP-D and its latent variant), TNP-D against a torch reference, losses."""

import pytest
import torch
from torch import nn

from pyro_meta.models import TransformerNP
from pyro_meta.testing import MetaModelContract, assert_close

from ..nn.test_attention import _torch_encoder_layer
from .np_family_checks import (
    assert_broadcasts_over_draws,
    assert_loss_is_the_pyro_objective,
    assert_padding_and_order_change_nothing,
    ragged_batch,
)

SMALL = dict(dim=8, num_layers=2, num_heads=2, dim_feedforward=16, embed_depth=2)


class TestTransformerNPContract(MetaModelContract):
    has_task_latent = False

    def make_model(self):
        return TransformerNP(**SMALL)


class TestTransformerNPLatentContract(MetaModelContract):
    def make_model(self):
        return TransformerNP(latent=True, latent_dim=3, **SMALL)


@pytest.mark.parametrize("kwargs", [dict(), dict(latent=True, latent_dim=3), dict(norm_first=True)])
def test_loss_padding_and_draws(kwargs):
    torch.manual_seed(0)
    model = TransformerNP(**{**SMALL, **kwargs})
    batch = ragged_batch()
    assert_loss_is_the_pyro_objective(model, batch)
    assert_padding_and_order_change_nothing(model, batch)
    assert_broadcasts_over_draws(model, batch)


def test_tnp_d_matches_the_authors_formulation():
    """TNP-D as written by its authors: one sequence ``[e([x_c, y_c]), e([x_t, 0])]`` through
    ``nn.TransformerEncoderLayer``s with the additive mask that opens only the context columns, a head on
    the target rows; our loss is minus its per-task summed target log-likelihood."""
    torch.manual_seed(0)
    model = TransformerNP(**{**SMALL, "num_layers": 3})
    batch = ragged_batch(T=3, nc=4, nt=5)
    Nc, Nt = 4, 5
    seq = model.embedder(
        torch.cat(
            [
                torch.cat([batch.context_x, batch.context_y], -1),
                torch.cat([batch.target_x, torch.zeros_like(batch.target_y)], -1),
            ],
            1,
        )
    )
    mask = torch.full((Nc + Nt, Nc + Nt), float("-inf"))
    mask[:, :Nc] = 0.0
    for layer in nn.ModuleList(_torch_encoder_layer(b) for b in model.encoder.blocks):
        seq = layer(seq, src_mask=mask)
    loc, raw = model.decoder(seq[:, Nc:]).chunk(2, -1)
    scale = 0.01 + 0.99 * nn.functional.softplus(raw)
    ll = torch.distributions.Normal(loc, scale).log_prob(batch.target_y).sum((-1, -2))
    assert_close(model.loss(batch), -ll.mean(), atol=1e-4, what="TNP-D loss vs the reference")


def test_validation():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        TransformerNP(dim=10, num_heads=4)
    with pytest.raises(ValueError, match="embed_depth"):
        TransformerNP(embed_depth=1)
    with pytest.raises(ValueError, match="dim_feedforward"):
        TransformerNP(dim_feedforward=0)
    with pytest.raises(ValueError, match="objective"):
        TransformerNP(objective="elbo")
