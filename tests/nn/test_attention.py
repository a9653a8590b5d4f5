"""MultiHeadAttention, AttentionBlock against torch's MultiheadAttention, TransformerEncoderLayer (key_padding_mask)."""

import pytest
import torch
from torch import nn

from pyro_meta.nn import AttentionBlock, MultiHeadAttention
from pyro_meta.testing import assert_close


def _torch_mha(mha: MultiHeadAttention) -> nn.MultiheadAttention:
    """A torch.nn.MultiheadAttention with the weights of ``mha`` (needs ``dim_q == dim``)."""
    ref = nn.MultiheadAttention(mha.dim, mha.num_heads, kdim=mha.dim_kv, vdim=mha.dim_kv, batch_first=True)
    _load_torch_mha(ref, mha)
    return ref


def _load_torch_mha(ref: nn.MultiheadAttention, mha: MultiHeadAttention) -> None:
    with torch.no_grad():
        if ref._qkv_same_embed_dim:
            ref.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
        else:
            ref.q_proj_weight.copy_(mha.q_proj.weight)
            ref.k_proj_weight.copy_(mha.k_proj.weight)
            ref.v_proj_weight.copy_(mha.v_proj.weight)
        ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)


def _ragged_mask(T: int, N: int, generator: torch.Generator) -> torch.Tensor:
    mask = torch.rand(T, N, generator=generator) < 0.6
    mask[:, 0] = True  # at least one real key per task
    return mask


@pytest.mark.parametrize("dim_kv", [8, 5])
def test_mha_matches_torch_multihead_attention(dim_kv, generator):
    T, Nq, Nk, D = 3, 4, 6, 8
    mha = MultiHeadAttention(D, dim_kv, D, num_heads=2)
    ref = _torch_mha(mha)
    q = torch.randn(T, Nq, D, generator=generator)
    k, v = torch.randn(T, Nk, dim_kv, generator=generator), torch.randn(T, Nk, dim_kv, generator=generator)
    mask = _ragged_mask(T, Nk, generator)
    out = mha(q, k, v, mask)
    expected, _ = ref(q, k, v, key_padding_mask=~mask)
    assert out.shape == (T, Nq, D)
    assert_close(out, expected, atol=1e-5, what="masked attention")
    assert_close(mha(q, k, v), ref(q, k, v)[0], atol=1e-5, what="no mask")
    # leading draw dims broadcast: queries [S, T, Nq, D] against one context [T, Nk, Dkv]
    qs = torch.randn(2, T, Nq, D, generator=generator)
    outs = mha(qs, k, v, mask)
    assert outs.shape == (2, T, Nq, D)
    for s in range(2):
        assert_close(outs[s], ref(qs[s], k, v, key_padding_mask=~mask)[0], atol=1e-5, what=f"draw {s}")


def test_fully_masked_rows_give_zeros_and_finite_gradients(generator):
    T, Nq, Nk, D = 3, 2, 4, 6
    mha = MultiHeadAttention(D, D, D, num_heads=3)
    q = torch.randn(T, Nq, D, generator=generator, requires_grad=True)
    k = torch.randn(T, Nk, D, generator=generator, requires_grad=True)
    mask = _ragged_mask(T, Nk, generator)
    mask[1] = False
    out = mha(q, k, k, mask)
    assert torch.equal(out[1], torch.zeros(Nq, D))
    assert bool(torch.isfinite(out).all())
    ref_out, _ = _torch_mha(mha)(q, k, k, key_padding_mask=~mask)
    assert bool(torch.isnan(ref_out[1]).all())  # what torch gives for the same row
    assert_close(out[[0, 2]], ref_out[[0, 2]], atol=1e-5, what="the other tasks")
    (out.square().sum() + out.sum()).backward()
    for name, t in [("q", q), ("k", k)] + list(mha.named_parameters()):
        assert t.grad is not None and bool(torch.isfinite(t.grad).all()), name
    assert torch.equal(k.grad[1], torch.zeros(Nk, D))  # masked keys get no gradient
    # an empty context (Nk = 0) gives zeros too
    assert torch.equal(mha(q, k[:, :0], k[:, :0], mask[:, :0]), torch.zeros(T, Nq, D))


def test_padding_and_permutation_invariance(generator):
    T, Nq, Nk, D = 2, 3, 5, 8
    mha = MultiHeadAttention(D, D, D, num_heads=2)
    q, k, v = (torch.randn(T, n, D, generator=generator) for n in (Nq, Nk, Nk))
    mask = _ragged_mask(T, Nk, generator)
    out = mha(q, k, v, mask)
    # padding: three more keys and values with large values, all masked
    pad = 100 * torch.randn(T, 3, D, generator=generator)
    mask_pad = torch.cat([mask, torch.zeros(T, 3, dtype=torch.bool)], 1)
    out_pad = mha(q, torch.cat([k, pad], 1), torch.cat([v, -pad], 1), mask_pad)
    assert_close(out_pad, out, atol=1e-6, what="padded keys")
    # keys permuted with their values and mask: invariant; queries permuted: equivariant
    perm = torch.randperm(Nk, generator=generator)
    assert_close(mha(q, k[:, perm], v[:, perm], mask[:, perm]), out, atol=1e-6, what="key permutation")
    qperm = torch.randperm(Nq, generator=generator)
    assert_close(mha(q[:, qperm], k, v, mask), out[:, qperm], atol=1e-6, what="query permutation")


def _torch_encoder_layer(block: AttentionBlock) -> nn.TransformerEncoderLayer:
    D = block.norm1.normalized_shape[0]
    ref = nn.TransformerEncoderLayer(
        D,
        block.attention.num_heads,
        dim_feedforward=block.mlp[0].out_features,
        dropout=0.0,
        batch_first=True,
        norm_first=block.norm_first,
    )
    _load_torch_mha(ref.self_attn, block.attention)
    ref.load_state_dict(
        {
            **ref.state_dict(),
            **{
                "linear1.weight": block.mlp[0].weight,
                "linear1.bias": block.mlp[0].bias,
                "linear2.weight": block.mlp[2].weight,
                "linear2.bias": block.mlp[2].bias,
                "norm1.weight": block.norm1.weight,
                "norm1.bias": block.norm1.bias,
                "norm2.weight": block.norm2.weight,
                "norm2.bias": block.norm2.bias,
            },
        }
    )
    return ref.train()  # dropout is 0; train mode keeps torch off its fused inference path


@pytest.mark.parametrize("norm_first", [False, True])
def test_self_attention_block_matches_transformer_encoder_layer(norm_first, generator):
    T, N, D = 3, 6, 8
    block = AttentionBlock(D, num_heads=2, hidden=12, norm_first=norm_first)
    ref = _torch_encoder_layer(block)
    x = torch.randn(T, N, D, generator=generator)
    mask = _ragged_mask(T, N, generator)
    out = block(x, mask=mask)
    expected = ref(x, src_key_padding_mask=~mask)
    assert out.shape == (T, N, D)
    assert_close(out[mask], expected[mask], atol=1e-5, what="real points")
    # padded points do not change the real ones; permuting the set permutes the output
    pad = 50 * torch.randn(T, 2, D, generator=generator)
    out_pad = block(torch.cat([x, pad], 1), mask=torch.cat([mask, torch.zeros(T, 2, dtype=bool)], 1))
    assert_close(out_pad[:, :N][mask], out[mask], atol=1e-5, what="padding")
    perm = torch.randperm(N, generator=generator)
    assert_close(block(x[:, perm], mask=mask[:, perm]), out[:, perm], atol=1e-6, what="permutation")


def test_cross_attention_block_matches_torch_composition(generator):
    T, Nq, Nk, D, Dc = 2, 5, 4, 8, 3
    block = AttentionBlock(D, num_heads=4, dim_kv=Dc)
    ref = _torch_mha(block.attention)
    x = torch.randn(2, T, Nq, D, generator=generator)  # targets with a draw dim
    c = torch.randn(T, Nk, Dc, generator=generator)
    mask = _ragged_mask(T, Nk, generator)
    out = block(x, c, mask)
    assert out.shape == (2, T, Nq, D)
    for s in range(2):
        h = block.norm1(x[s] + ref(x[s], c, c, key_padding_mask=~mask)[0])
        expected = block.norm2(h + block.mlp[2](torch.relu(block.mlp[0](h))))
        assert_close(out[s], expected, atol=1e-5, what=f"draw {s}")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="dim must be a multiple of num_heads"):
        MultiHeadAttention(4, 4, 6, num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(4, 4, 4, num_heads=0)
    mha = MultiHeadAttention(4, 3, 4, num_heads=2)
    q, k = torch.zeros(2, 5, 4), torch.zeros(2, 6, 3)
    with pytest.raises(ValueError, match=r"q must have shape \[\.\.\., T, N, 4\]"):
        mha(torch.zeros(2, 5, 3), k, k)
    with pytest.raises(ValueError, match=r"k must have shape \[\.\.\., T, N, 3\]"):
        mha(q, torch.zeros(2, 6, 4), k)
    with pytest.raises(ValueError, match="v must have the shape of k"):
        mha(q, k, torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="broadcastable leading dims"):
        mha(q, torch.zeros(3, 6, 3), torch.zeros(3, 6, 3))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        mha(q, k, k, torch.ones(2, 6))
    with pytest.raises(ValueError, match=r"mask must have shape \[\.\.\., T, N\]"):
        mha(q, k, k, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="k has NaN or inf"):
        mha(q, torch.full((2, 6, 3), float("inf")), k)
    with pytest.raises(TypeError, match="q must be a floating tensor"):
        mha(q.long(), k, k)
    block = AttentionBlock(4, num_heads=2)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., T, N, 4\]"):
        block(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match=r"context must have shape \[\.\.\., T, N, 4\]"):
        block(q, torch.zeros(2, 6, 3))
