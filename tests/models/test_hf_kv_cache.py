"""``HFDenoiser`` with a KV cache (``HFKVCache`` over the decoder's ``DynamicCache``): chunked
forwards — a prefill, one token at a time, a chunk under an explicit block mask, crops and
re-feeds — equal one full forward under the corresponding mask; the errors are named; the AR
process decodes the same tokens with and without the cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config

from thunderdlm.models import HFDenoiser, ModelConfig, build_model
from thunderdlm.models.hf_kv_cache import HFKVCache
from thunderdlm.models.kv_cache import KVCache
from thunderdlm.processes import SampleOptions
from thunderdlm.processes.autoregressive import AutoregressiveConfig, AutoregressiveProcess
from thunderdlm.sampling.loop import run_sampler
from tests.tiny_pretrained import tiny_pretrained

L, B = 16, 2
VARIANTS = {
    "no_time": dict(time_conditioning=False),
    "time_add": dict(time_conditioning=True, time_injection="add"),
    "time_film": dict(time_conditioning=True, time_injection="film"),
    "lora": dict(time_conditioning=True, time_injection="film", lora_rank=4, freeze_layers="half"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """family -> (model folder, vocabulary): the tiny pretrained Llama (with its BPE tokenizer)
    and tiny random GPT-2 / Qwen2 (learned positions; untied head)."""
    root = tmp_path_factory.mktemp("hf_cache_models")
    state = torch.random.get_rng_state()
    out = {"llama": (root / "llama", tiny_pretrained(root / "llama"))}
    for name, cfg in {
        "gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=40,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        "qwen2": Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=64, tie_word_embeddings=False),
    }.items():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(root / name)
        out[name] = (root / name, 40)
    torch.random.set_rng_state(state)
    return out


def adapter(folder: Path, vocab: int, **fields) -> HFDenoiser:
    """The adapter with one extra row (a mask token) and its time layers woken."""
    if fields.get("lora_rank"):
        fields.setdefault("lora_targets", ["q_proj", "k_proj", "v_proj", "o_proj"]
                          if "gpt2" not in str(folder) else ["c_attn", "c_proj"])
    model = build_model(ModelConfig(name="hf", path=str(folder), cond_dim=16, **fields),
                        vocab + 1, 64).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in (model.time_add, model.time_film):
            if layer is not None:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.1)
    return model


def reference_mask() -> torch.Tensor:
    """(L, L): positions 0..11 causal, then a block 12..15 that sees everything up to 15."""
    m = torch.ones(L, L, dtype=torch.bool).tril()
    m[12:, :] = True
    return m


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_chunked_cached_forwards_equal_the_full_forward(folders, family, variant):
    folder, vocab = folders[family]
    model = adapter(folder, vocab, **VARIANTS[variant])
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab + 1, (B, L), generator=g)
    y = x.clone()
    y[:, 12:] = torch.randint(0, vocab + 1, (B, 4), generator=g)     # another block at 12..15
    sig = torch.rand(B, L, generator=g)                               # one σ per token
    M = reference_mask()
    with torch.no_grad():
        full_x, full_y = model(x, sig, attn_mask=M), model(y, sig, attn_mask=M)
        cache = model.new_kv_cache()
        parts = [model(x[:, :8], sig[:, :8], causal=True, kv_cache=cache)]        # prefill
        for p in range(8, 12):                                                    # one at a time
            parts.append(model(x[:, p:p + 1], sig[:, p:p + 1], causal=True, kv_cache=cache))
        assert cache.length == 12
        torch.testing.assert_close(torch.cat(parts, 1), full_x[:, :12], atol=1e-5, rtol=1e-5)
        block = model(x[:, 12:], sig[:, 12:], kv_cache=cache, attn_mask=M[12:])   # (4, 16) mask
        torch.testing.assert_close(block, full_x[:, 12:], atol=1e-5, rtol=1e-5)
        assert cache.length == L
        cache.crop(12)                                                            # drop the block
        again = model(y[:, 12:], sig[:, 12:], kv_cache=cache, attn_mask=M[12:])
        torch.testing.assert_close(again, full_y[:, 12:], atol=1e-5, rtol=1e-5)
        cache.crop(6)                                                             # roll back further
        tail = model(y[:, 6:], sig[:, 6:], kv_cache=cache, attn_mask=M[6:])       # (10, 16) mask
        torch.testing.assert_close(tail, full_y[:, 6:], atol=1e-5, rtol=1e-5)
        assert cache.length == L and cache.batch_size == B


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_a_dropped_middle_is_refed_at_its_positions_exactly(folders, family):
    """Fast-dLLM's DualCache: all keys from one bidirectional forward, the middle block dropped,
    then the block fed alone at its own positions equals the full forward's block."""
    folder, vocab = folders[family]
    model = adapter(folder, vocab)
    x = torch.randint(0, vocab + 1, (B, L), generator=torch.Generator().manual_seed(4))
    full = torch.ones(L, L, dtype=torch.bool)
    with torch.no_grad():
        ref = model(x, attn_mask=full)[:, 6:10]
        cache = model.new_kv_cache()
        model(x, kv_cache=cache, attn_mask=full)
        cache.drop(6, 10)
        assert cache.length == L - 4
        out = model(x[:, 6:10], kv_cache=cache, attn_mask=torch.ones(4, L, dtype=torch.bool),
                    positions=torch.arange(6, 10))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        assert cache.length == L
        with pytest.raises(ValueError, match="cannot drop"):
            cache.drop(3, L + 1)


def test_explicit_positions_after_the_cache_are_honoured(folders):
    folder, vocab = folders["llama"]
    model = adapter(folder, vocab)
    x = torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.new_kv_cache()
        model(x[:, :8], causal=True, kv_cache=cache)
        default = model(x[:, 8:12], causal=True, kv_cache=cache)
        cache.crop(8)
        same = model(x[:, 8:12], causal=True, kv_cache=cache, positions=torch.arange(8, 12))
        cache.crop(8)
        moved = model(x[:, 8:12], causal=True, kv_cache=cache, positions=torch.arange(20, 24))
        pos = torch.cat([torch.arange(8), torch.arange(20, 24)])
        full = model(x[:, :12], attn_mask=torch.ones(12, 12, dtype=torch.bool).tril(),
                     positions=pos)
    torch.testing.assert_close(same, default, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(moved, full[:, 8:], atol=1e-6, rtol=1e-6)
    assert (moved - default).abs().max() > 1e-6                      # rotary angles of 20..23


def test_cache_errors_are_named(folders):
    folder, vocab = folders["llama"]
    model = adapter(folder, vocab, time_conditioning=False)
    x = torch.randint(0, vocab, (B, 8), generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="causal attention"):
        model(x, causal=False, kv_cache=model.new_kv_cache())
    with pytest.raises(ValueError, match="its own KV cache"):
        model(x, causal=True, kv_cache=KVCache(4, 64))
    with pytest.raises(ValueError, match="do not fit"):
        model(x, causal=True, kv_cache=model.new_kv_cache(6))
    cache = model.new_kv_cache()
    model(x, causal=True, kv_cache=cache)
    with pytest.raises(ValueError, match="rows"):
        model(x[:1, :2], causal=True, kv_cache=cache)
    with pytest.raises(ValueError, match="cannot crop"):
        cache.crop(9)
    with pytest.raises(ValueError, match=r"attn_mask must be bool \(\.\.\., 2, 10\)"):
        model(x[:, :2], kv_cache=cache, attn_mask=torch.ones(2, 2, dtype=torch.bool))
    shifted = adapter(folder, vocab, time_conditioning=False, shift_logits=True)
    with pytest.raises(ValueError, match="shift_logits=False"):
        shifted(x, causal=True, kv_cache=shifted.new_kv_cache())
    out = shifted(x, causal=True, kv_cache=shifted.new_kv_cache(), shift_logits=False)
    # the same pretrained rows (the mask rows are drawn at random by the mean resizing)
    torch.testing.assert_close(out[..., :vocab], model(x, causal=True)[..., :vocab],
                               atol=1e-6, rtol=1e-6)


def test_a_cropped_cache_is_empty_and_reusable(folders):
    folder, vocab = folders["llama"]
    model = adapter(folder, vocab)
    x = torch.randint(0, vocab, (B, 8), generator=torch.Generator().manual_seed(4))
    cache = model.new_kv_cache()
    assert isinstance(cache, HFKVCache) and cache.length == 0 and cache.batch_size is None
    with torch.no_grad():
        first = model(x, causal=True, kv_cache=cache)
        cache.crop(0)
        assert cache.length == 0
        torch.testing.assert_close(model(x, causal=True, kv_cache=cache), first, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("options", [SampleOptions(temperature=0.0), SampleOptions()])
def test_autoregressive_decoding_on_the_adapter_is_the_same_with_the_cache(folders, options):
    folder, vocab = folders["llama"]
    model = adapter(folder, vocab)                   # vocab + 1 rows: the AR process's BOS
    x = torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(5))
    editable = torch.zeros(B, L, dtype=torch.bool)
    editable[:, 5:] = True
    runs = [run_sampler(AutoregressiveProcess(AutoregressiveConfig(kv_cache=kv), vocab), model, x,
                        editable, steps=L - 5, options=options,
                        generator=torch.Generator().manual_seed(6)) for kv in (True, False)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert (runs[0].tokens[:, :5] == x[:, :5]).all()
