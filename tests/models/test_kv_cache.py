"""KV cache: incremental causal forwards equal the full causal forward, for every backbone."""
from __future__ import annotations

import pytest
import torch

from thunderdlm.models import DDiT, GPT
from thunderdlm.models.kv_cache import KVCache
from thunderdlm.models.layers import Rotary

V, MAX_LEN, B = 11, 16, 3

# (backbone, pos_emb, time_conditioning)
VARIANTS = [("gpt", "learned", False), ("gpt", "rotary", False), ("gpt", "sinusoidal", False),
            ("gpt", "learned", True), ("ddit", "rotary", True), ("ddit", "rotary", False)]
# chunk boundaries over MAX_LEN positions: one token at a time, prefill then tokens, ragged chunks
CHUNKINGS = [list(range(MAX_LEN + 1)), [0, 7] + list(range(8, MAX_LEN + 1)), [0, 1, 4, 5, 11, 16]]


def _model(tiny_cfg, perturb, name: str, pos_emb: str, time_conditioning: bool):
    cfg = tiny_cfg(name, pos_emb=pos_emb, time_conditioning=time_conditioning, causal=True)
    model = (GPT if name == "gpt" else DDiT)(cfg, V, MAX_LEN).eval()
    return perturb(model)       # wake up DDiT's zero-initialised gates and output layer


def _incremental(model, x, bounds, sigma=None, per_token=False, cache=None):
    """Logits over x fed in chunks [bounds[i], bounds[i+1]) through one cache: (B, L, V)."""
    cache = cache or model.new_kv_cache()
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = sigma[:, a:b] if per_token else sigma
        assert cache.length == a
        outs.append(model(x[:, a:b], s, causal=True, kv_cache=cache))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("bounds", CHUNKINGS, ids=["tokens", "prefill", "ragged"])
@pytest.mark.parametrize("name,pos_emb,time_conditioning", VARIANTS)
@torch.no_grad()
def test_incremental_logits_equal_full_causal_forward(tiny_cfg, perturb, name, pos_emb,
                                                      time_conditioning, bounds) -> None:
    model = _model(tiny_cfg, perturb, name, pos_emb, time_conditioning)
    x, sigma = torch.randint(0, V, (B, MAX_LEN)), torch.rand(B) * 3
    full = model(x, sigma, causal=True)                                  # (B, L, V)
    inc = _incremental(model, x, bounds, sigma)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)
    # and a shorter prefix equals the full forward over that prefix
    torch.testing.assert_close(_incremental(model, x[:, :9], [0, 4, 9], sigma),
                               model(x[:, :9], sigma, causal=True), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,pos_emb", [("gpt", "rotary"), ("ddit", "rotary")])
@torch.no_grad()
def test_per_token_sigma_takes_the_new_positions(tiny_cfg, perturb, name, pos_emb) -> None:
    model = _model(tiny_cfg, perturb, name, pos_emb, True)
    x, sigma = torch.randint(0, V, (B, MAX_LEN)), torch.rand(B, MAX_LEN) * 3     # (B, L)
    full = model(x, sigma, causal=True)
    torch.testing.assert_close(_incremental(model, x, [0, 6, 7, 12, 16], sigma, per_token=True),
                               full, atol=1e-5, rtol=1e-5)
    # the sigma of the new positions matters (the test would pass vacuously otherwise)
    other = _incremental(model, x, [0, 6, 7, 12, 16], sigma.flip(1), per_token=True)
    assert not torch.allclose(other, full, atol=1e-3)


@torch.no_grad()
def test_crop_rolls_back_to_a_prefix(tiny_cfg, perturb) -> None:
    model = _model(tiny_cfg, perturb, "gpt", "rotary", False)
    x = torch.randint(0, V, (B, MAX_LEN))
    cache = model.new_kv_cache()
    model(x[:, :10], causal=True, kv_cache=cache)
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % V                    # the text changes from position 6 on
    cache.crop(6)
    tail = model(y[:, 6:], causal=True, kv_cache=cache)                  # (B, 10, V)
    torch.testing.assert_close(tail, model(y, causal=True)[:, 6:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tail, model(x, causal=True)[:, 6:], atol=1e-3)


@torch.no_grad()
def test_buffers_are_preallocated_once_and_reused(tiny_cfg, perturb) -> None:
    model = _model(tiny_cfg, perturb, "gpt", "learned", False)
    x = torch.randint(0, V, (B, MAX_LEN))
    cache = model.new_kv_cache()
    assert cache.batch_size is None and cache.max_len == MAX_LEN
    model(x[:, :3], causal=True, kv_cache=cache)
    ptrs = [k.data_ptr() for k in cache.keys]
    assert cache.keys[0].shape == (B, 2, MAX_LEN, 16) and cache.batch_size == B
    model(x[:, 3:4], causal=True, kv_cache=cache)
    assert [k.data_ptr() for k in cache.keys] == ptrs and cache.length == 4
    cache.reset()
    assert cache.length == 0 and cache.batch_size is None


@torch.no_grad()
def test_misuse_is_rejected_with_a_clear_message(tiny_cfg, perturb) -> None:
    model = _model(tiny_cfg, perturb, "ddit", "rotary", True)
    x = torch.randint(0, V, (B, MAX_LEN))
    with pytest.raises(ValueError, match="causal"):
        model(x[:, :2], causal=False, kv_cache=model.new_kv_cache())
    cache = model.new_kv_cache(8)
    model(x[:, :6], causal=True, kv_cache=cache)
    with pytest.raises(ValueError, match="do not fit"):
        model(x[:, 6:9], causal=True, kv_cache=cache)
    with pytest.raises(ValueError, match="rows"):
        model(x[:1, 6:7], causal=True, kv_cache=cache)
    with pytest.raises(ValueError, match="layers"):
        model(x[:, :1], causal=True, kv_cache=KVCache(5, MAX_LEN))
    with pytest.raises(ValueError, match="sigma"):        # (B, L) sigma, L != n
        model(x[:, 6:7], torch.rand(B, MAX_LEN), causal=True, kv_cache=cache)
    assert cache.length == 6                         # failed calls left the cache as it was
    with pytest.raises(ValueError, match="crop"):
        cache.crop(7)


@pytest.mark.parametrize("offset", [0, 1, 5])
def test_rotary_offset_rotates_by_absolute_position(offset: int) -> None:
    rot = Rotary(head_dim=8)
    q, k = torch.randn(2, 3, offset + 4, 8), torch.randn(2, 3, offset + 4, 8)
    q_full, k_full = rot.apply(q, k)
    q_new, k_new = rot.apply(q[:, :, offset:], k[:, :, offset:], offset=offset)
    torch.testing.assert_close(q_new, q_full[:, :, offset:])
    torch.testing.assert_close(k_new, k_full[:, :, offset:])
