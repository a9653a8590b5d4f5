"""ContextTargetTransformer against torch's TransformerEncoder with the TNP-D target-to-context mask."""

import pytest
import torch
from torch import nn

from pyro_meta.nn import ContextTargetTransformer
from pyro_meta.testing import assert_close

from .test_attention import _torch_encoder_layer


def _tnp_reference(model: ContextTargetTransformer, context, target, num_context: int):
    """TNP-D as its authors wrote it: one sequence ``[context, target]``, additive mask ``-inf`` except the
    context columns, a stack of ``nn.TransformerEncoderLayer`` with our weights; the target rows come out."""
    layers = nn.ModuleList(_torch_encoder_layer(b) for b in model.blocks)
    seq = torch.cat([context, target], 1)
    n = seq.shape[1]
    mask = torch.full((n, n), float("-inf"))
    mask[:, :num_context] = 0.0
    for layer in layers:
        seq = layer(seq, src_mask=mask)
    return seq[:, num_context:]


@pytest.mark.parametrize("norm_first", [False, True])
def test_matches_transformer_encoder_with_the_tnp_mask(norm_first, generator):
    T, Nc, Nt, D = 3, 5, 4, 8
    model = ContextTargetTransformer(D, num_layers=3, num_heads=2, hidden=12, norm_first=norm_first)
    c, t = torch.randn(T, Nc, D, generator=generator), torch.randn(T, Nt, D, generator=generator)
    out = model(c, t)
    assert out.shape == (T, Nt, D)
    assert_close(out, _tnp_reference(model, c, t, Nc), atol=1e-5, what="TNP-D encoder")


def test_padding_targets_independence_and_draw_dims(generator):
    T, Nc, Nt, D = 2, 6, 5, 8
    model = ContextTargetTransformer(D, num_layers=2, num_heads=2)
    c, t = torch.randn(T, Nc, D, generator=generator), torch.randn(T, Nt, D, generator=generator)
    mask = torch.ones(T, Nc, dtype=torch.bool)
    mask[0, 3:] = False  # task 0 has 3 real context points
    out = model(c, t, mask)
    # padded context tokens change nothing: the reference on the real context alone
    assert_close(out[0], _tnp_reference(model, c[:1, :3], t[:1], 3)[0], atol=1e-5, what="padded task")
    c2 = torch.where(mask[..., None], c, 100 * torch.ones_like(c))
    assert_close(model(c2, t, mask), out, atol=1e-5, what="padding values")
    # each target depends on the context and itself only (no target-target attention)
    assert_close(model(c, t[:, :2], mask), out[:, :2], atol=1e-5, what="targets independent")
    # leading draw dims broadcast
    ts = torch.randn(3, T, Nt, D, generator=generator)
    outs = model(c, ts, mask)
    assert outs.shape == (3, T, Nt, D)
    assert_close(outs[1], model(c, ts[1], mask), atol=1e-5, what="draw dim")
    # an empty context is finite
    assert bool(torch.isfinite(model(c, t, torch.zeros(T, Nc, dtype=torch.bool))).all())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_layers"):
        ContextTargetTransformer(8, num_layers=0)
    model = ContextTargetTransformer(8, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match="target"):
        model(torch.randn(2, 3, 8), torch.randn(2, 3, 7))
    with pytest.raises(TypeError, match="mask"):
        model(torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.ones(2, 3))
