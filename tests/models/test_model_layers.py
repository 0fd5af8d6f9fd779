"""Shared layers: timestep features, rotary and sinusoidal positions, fp32 LayerNorm, modulate,
attention, MLP."""
from __future__ import annotations

import math

import pytest
import torch

from thunderdlm.models.layers import (MLP, LayerNorm, Rotary, SelfAttention, TimestepEmbedder,
                                      modulate, rotate_half, sinusoidal_positions)


def test_timestep_features_match_formula() -> None:
    emb = TimestepEmbedder(cond_dim=8)
    sigma = torch.tensor([0.0, 0.5, 3.0])
    k = torch.arange(128, dtype=torch.float64)
    f = torch.exp(-math.log(10000.0) * k / 128)                              # f_k
    args = sigma.double()[:, None] * f
    want = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    got = emb.features(sigma)
    assert got.shape == (3, 256) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_timestep_embedder_per_sequence_and_per_token() -> None:
    emb = TimestepEmbedder(cond_dim=8)
    sigma = torch.rand(2)
    per_seq = emb(sigma)                                                     # (B, C)
    per_tok = emb(sigma[:, None].expand(2, 5))                               # (B, L, C)
    assert per_seq.shape == (2, 8) and per_tok.shape == (2, 5, 8)
    torch.testing.assert_close(per_tok, per_seq[:, None].expand(2, 5, 8))
    assert not torch.allclose(emb(torch.zeros(1)), emb(torch.ones(1)))


def test_rotary_scores_depend_only_on_relative_position() -> None:
    rot = Rotary(head_dim=8)
    L = 12
    q = torch.randn(8).expand(1, 1, L, 8)           # the same query vector at every position
    k = torch.randn(8).expand(1, 1, L, 8)
    qr, kr = rot.apply(q, k)
    scores = (qr @ kr.transpose(-1, -2))[0, 0]      # (L, L): scores[m, n] = q_m · k_n
    for shift in (1, 3, 5):                         # a shared shift of both positions
        torch.testing.assert_close(scores[shift:, shift:], scores[:-shift, :-shift],
                                   atol=1e-5, rtol=1e-5)
    assert not torch.allclose(scores[0, 1], scores[0, 4])   # but the offset does matter


def test_rotary_is_a_rotation_and_identity_at_position_zero() -> None:
    rot = Rotary(head_dim=6)
    q, k = torch.randn(2, 3, 7, 6), torch.randn(2, 3, 7, 6)
    qr, kr = rot.apply(q, k)
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(qr[:, :, 0], q[:, :, 0])
    torch.testing.assert_close(rotate_half(rotate_half(q)), -q)


def test_rotary_cache_follows_dtype_and_inference_mode() -> None:
    rot = Rotary(head_dim=4)
    q = torch.randn(1, 1, 5, 4, dtype=torch.float64)
    assert rot.apply(q, q)[0].dtype == torch.float64
    with torch.inference_mode():                     # e.g. sampling during training
        rot.apply(torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4))
    q = torch.randn(1, 1, 5, 4, requires_grad=True)
    qr, _ = rot.apply(q, q)
    qr.sum().backward()                              # no "inference tensor saved for backward"
    assert q.grad is not None


def test_sinusoidal_positions() -> None:
    table = sinusoidal_positions(10, 6)
    assert table.shape == (10, 6)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0] * 3))
    torch.testing.assert_close(table[3, 2], torch.tensor(math.sin(3 / 10000 ** (2 / 6))))
    assert sinusoidal_positions(4, 5).shape == (4, 5)


def test_layernorm_weight_only_fp32_under_autocast() -> None:
    ln = LayerNorm(16)
    assert ln.bias is None and [n for n, _ in ln.named_parameters()] == ["weight"]
    with torch.no_grad():
        ln.weight.mul_(2.0)
    x = torch.randn(2, 3, 16) * 5 + 1
    y = ln(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(-1, unbiased=False), torch.full((2, 3), 2.0),
                               atol=1e-3, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_amp = ln(x)
    assert y_amp.dtype == torch.float32
    torch.testing.assert_close(y_amp, y)
    assert [n for n, _ in LayerNorm(4, bias=True).named_parameters()] == ["weight", "bias"]


def test_modulate_per_sequence_equals_per_token() -> None:
    x = torch.randn(2, 5, 4)
    shift, scale = torch.randn(2, 4), torch.randn(2, 4)
    out = modulate(x, shift, scale)
    torch.testing.assert_close(out, x * (1 + scale[:, None]) + shift[:, None])
    torch.testing.assert_close(
        modulate(x, shift[:, None].expand(2, 5, 4), scale[:, None].expand(2, 5, 4)), out)


@pytest.mark.parametrize("rotary", [False, True])
def test_self_attention_causal_flag(rotary: bool) -> None:
    attn = SelfAttention(16, 2, rotary=Rotary(8) if rotary else None)
    x = torch.randn(2, 6, 16)
    x2 = x.clone()
    x2[:, -1] += 1.0                                 # change only the last position
    for causal in (False, True):
        y, y2 = attn(x, causal=causal), attn(x2, causal=causal)
        assert y.shape == (2, 6, 16)
        same_prefix = torch.allclose(y[:, :-1], y2[:, :-1], atol=1e-6)
        assert same_prefix == causal


def test_mlp_shapes_and_bias() -> None:
    mlp = MLP(8, ratio=3)
    assert mlp.c_fc.weight.shape == (24, 8) and mlp.c_fc.bias is not None
    assert mlp(torch.randn(2, 5, 8)).shape == (2, 5, 8)
    assert MLP(8, bias=False).c_proj.bias is None
