"""SetEncoder against per-task references over the real points only; padding and permutation invariance."""

import pytest
import torch
from torch import nn

from pyro_meta.nn import SetEncoder
from pyro_meta.testing import assert_close

CONFIGS = [("mean", 0), ("mean", 2), ("attention", 0), ("attention", 1)]


def _points(T, N, D, generator):
    x = torch.randn(T, N, D, generator=generator)
    mask = torch.rand(T, N, generator=generator) < 0.6
    mask[:, 0] = True
    return x, mask


def test_mean_pooling_matches_per_task_mean_over_real_points(generator):
    enc = SetEncoder(3, [16, 8], 5, pooling="mean", activation="tanh")
    x, mask = _points(4, 7, 3, generator)
    out = enc(x, mask)
    assert out.shape == (4, 5)
    for t in range(4):
        assert_close(out[t], enc.rho(enc.point_mlp(x[t][mask[t]]).mean(0)), atol=1e-6, what=f"task {t}")


def test_attention_pooling_matches_torch_attention_over_real_points(generator):
    """PMA: LN2(h + MLP(h)), h = LN1(s + MHA(s, Z, Z)); reference: nn.MultiheadAttention on the real points only."""
    enc = SetEncoder(3, 8, 4, pooling="attention", num_heads=2)
    block = enc.pool_block
    ref = nn.MultiheadAttention(8, 2, batch_first=True)
    a = block.attention
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
        ref.out_proj.load_state_dict(a.out_proj.state_dict())
    x, mask = _points(3, 6, 3, generator)
    out = enc(x, mask)
    for t in range(3):
        z = enc.point_mlp(x[t][mask[t]])[None]  # [1, n_t, H]
        s = enc.seed[None, None]
        h = block.norm1(s + ref(s, z, z)[0])
        h = block.norm2(h + block.mlp(h))
        assert_close(out[t], enc.rho(h[0, 0]), atol=1e-5, what=f"task {t}")


@pytest.mark.parametrize("pooling, num_sab", CONFIGS)
def test_padding_and_permutation_invariance(pooling, num_sab, generator):
    enc = SetEncoder(2, 8, 3, pooling=pooling, num_self_attention=num_sab, num_heads=2)
    x, mask = _points(3, 5, 2, generator)
    out = enc(x, mask)
    pad = 30 * torch.randn(3, 4, 2, generator=generator)
    out_pad = enc(torch.cat([x, pad], 1), torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1))
    assert_close(out_pad, out, atol=1e-5, what="padding")
    perm = torch.randperm(5, generator=generator)
    assert_close(enc(x[:, perm], mask[:, perm]), out, atol=1e-5, what="permutation")
    # changing a padded point's value changes nothing either
    x2 = torch.where(mask[..., None], x, -x - 5)
    assert_close(enc(x2, mask), out, atol=1e-5, what="padded values")


@pytest.mark.parametrize("pooling, num_sab", CONFIGS)
def test_shapes_draw_dims_and_empty_sets(pooling, num_sab, generator):
    enc = SetEncoder(2, 8, 3, pooling=pooling, num_self_attention=num_sab, num_heads=4)
    x, mask = _points(3, 5, 2, generator)
    mask[1] = False  # an empty set
    xs = torch.randn(2, 3, 5, 2, generator=generator)
    out = enc(xs, mask)
    assert out.shape == (2, 3, 3)
    for s in range(2):
        assert_close(out[s], enc(xs[s], mask), atol=1e-6, what=f"draw {s}")
    assert_close(out[0, 1], out[1, 1], atol=1e-6, what="empty set independent of its padding")
    assert enc(x).shape == (3, 3)  # no mask: every point real
    assert enc(x[:, :0], mask[:, :0]).shape == (3, 3)
    x.requires_grad_(True)
    enc(x, mask).sum().backward()
    for name, t in [("x", x)] + list(enc.named_parameters()):
        assert t.grad is not None and bool(torch.isfinite(t.grad).all()), name
    assert torch.equal(x.grad[1], torch.zeros(5, 2))


def test_mean_encoder_is_the_neural_process_latent_encoder(generator):
    from pyro_meta.models import NeuralProcess

    np_model = NeuralProcess(x_dim=1, y_dim=2, latent_dim=3, hidden=8, activation="relu")
    enc = SetEncoder(3, 8, 6, pooling="mean", activation="relu")
    enc.point_mlp.load_state_dict(np_model.latent_encoder.state_dict())
    enc.rho.load_state_dict(np_model.latent_head.state_dict())
    x, mask = _points(4, 5, 3, generator)
    q = np_model.encode(x[..., :1], x[..., 1:], mask)
    loc = enc(x, mask)[..., :3]
    assert_close(loc, q.base_dist.loc, atol=1e-6, what="q(z | D) location")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="pooling"):
        SetEncoder(2, 8, 3, pooling="max")
    with pytest.raises(ValueError, match="hidden"):
        SetEncoder(2, [], 3)
    with pytest.raises(ValueError, match=r"hidden: the last width \(6\) must be a multiple of num_heads \(4\)"):
        SetEncoder(2, 6, 3, pooling="attention")
    with pytest.raises(ValueError, match="num_self_attention"):
        SetEncoder(2, 8, 3, num_self_attention=-1)
    with pytest.raises(ValueError, match="out_dim"):
        SetEncoder(2, 8, 0)
    enc = SetEncoder(2, 8, 3)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., T, N, 2\]"):
        enc(torch.zeros(3, 5, 3))
    with pytest.raises(ValueError, match=r"mask must have shape \[\.\.\., T, N\]"):
        enc(torch.zeros(3, 5, 2), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        enc(torch.zeros(3, 5, 2), torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="x has NaN"):
        enc(torch.full((3, 5, 2), float("nan")), torch.ones(3, 5, dtype=torch.bool))
