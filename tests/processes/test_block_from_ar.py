"""An AR model made a block diffusion model (recipe 3; Fast-dLLM v2 / SDAR): the hf adapter with its
shifted head under the block process. The x_t ⊕ x0 forward reads the outputs the shift asks for
(equal to block-by-block decoding with the adapter's own shift), the KV cache decodes the tokens of
the recomputed path, and before any training, with blocks of one token, threshold decoding at τ = 1
is the pretrained model's greedy AR decoding, token for token.

Why only blocks of one: with blocks of bs > 1 a block's first position reads the output of the last
clean token before it, but that output is not the causal LM's — inside each clean block attention
is bidirectional (BD3-LM's block-causal M_BC), so from the second layer on the last token of a
block reads keys of earlier tokens that saw it; and the block's other positions read outputs that
attend to the block's masks. (Checked on SmolLM2-135M: blocks of 1 give its greedy continuation,
blocks of 4 do not, not even at block starts; a tiny random model can agree by chance.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from thunderdlm.config import from_dict
from thunderdlm.models import ModelConfig, build_model
from thunderdlm.processes import ProcessConfig, SampleOptions, build_process
from thunderdlm.processes.base import StepContext
from thunderdlm.processes.block.attention import block_causal, shifted_reads, training_mask
from thunderdlm.sampling.loop import run_sampler
from tests.tiny_pretrained import tiny_pretrained

L, B = 16, 3
GREEDY_TAU_1 = SampleOptions(remasking="low_confidence", temperature=0.0, threshold=1.0)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, int]:
    """(folder, vocabulary) of the tiny pretrained Llama with its BPE tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    state = torch.random.get_rng_state()
    vocab = tiny_pretrained(folder)
    torch.random.set_rng_state(state)
    return folder, vocab


def block_process(vocab: int, bs: int, **kw):
    return build_process(from_dict(ProcessConfig, {"name": "block", "block_size": bs, **kw}), vocab)


def adapter(folder: Path, proc, shift: bool = True, **fields):
    """The adapter as recipe 3 builds it: the mask row added, the head shifted, no time signal
    unless the process asks for it (then woken, so that σ acts)."""
    torch.manual_seed(0)
    cfg = ModelConfig(name="hf", path=str(folder), cond_dim=16, shift_logits=shift,
                      time_conditioning=proc.cfg.time_conditioning, **fields)
    model = build_model(cfg, proc.model_vocab_size, 64).eval()
    with torch.no_grad():
        if model.time_add is not None:
            model.time_add.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(3))
    return model


# ---- the shifted x_t ⊕ x0 forward -----------------------------------------------------------------

def test_shifted_reads_point_inside_the_block_or_at_the_last_clean_token_before_it():
    reads = shifted_reads(L, 4).tolist()
    assert reads[:9] == [0, 0, 1, 2, L + 3, 4, 5, 6, L + 7]
    allowed = training_mask(L, 4)
    assert all(bool(allowed[i, r]) for i, r in enumerate(reads))   # each read is visible to i


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_shifted_nelbo_equals_block_by_block_decoding_with_the_adapters_own_shift(pretrained,
                                                                                   time_conditioning):
    folder, vocab = pretrained
    bs = 4
    proc = block_process(vocab, bs, time_conditioning=time_conditioning)
    net = adapter(folder, proc)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, vocab, (B, L), generator=g)
    t = torch.rand(B, L // bs, generator=g).clamp(min=0.05)
    with torch.no_grad():
        nelbo, _ = proc.block_nelbo_at(net, x0, t, torch.Generator().manual_seed(1))
        # the same draw, then every block as the sampler sees it: clean blocks, the noisy block,
        # one left-to-right sequence, where the adapter's own shift (position i reads i − 1) is right
        t_tok = t.repeat_interleave(bs, dim=1)
        masked = torch.rand(x0.shape, generator=torch.Generator().manual_seed(1)) < t_tok
        xt = torch.where(masked, torch.full_like(x0, proc.mask_id), x0)
        sig = proc.schedule.sigma_for_conditioning(t_tok) if time_conditioning else None
        logits = torch.empty(B, L, proc.model_vocab_size)
        for lo in range(0, L, bs):
            hi, p = lo + bs, torch.arange(lo + bs)
            s = None if sig is None else torch.cat([torch.zeros(B, lo), sig[:, lo:hi]], 1)
            logits[:, lo:hi] = net(torch.cat([x0[:, :lo], xt[:, lo:hi]], 1), s,
                                   attn_mask=block_causal(p, p, bs))[:, lo:hi]
    logits[..., proc.mask_id] = -1e6
    nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none") * masked
    torch.testing.assert_close(nelbo, (nll / t_tok).sum(1) / L, atol=1e-4, rtol=1e-5)
    unshifted = adapter(folder, proc, shift=False)
    with torch.no_grad():
        plain = proc.block_nelbo_at(unshifted, x0, t, torch.Generator().manual_seed(1))[0]
    assert (plain - nelbo).abs().max() > 1e-3                  # the shift is really applied


# ---- decoding with the KV cache -------------------------------------------------------------------

def test_cached_shifted_logits_equal_the_uncached_ones_in_any_call_order(pretrained):
    folder, vocab = pretrained
    cached, plain = block_process(vocab, 4), block_process(vocab, 4, kv_cache=False)
    net = adapter(folder, cached)
    x = torch.randint(0, vocab, (2, L), generator=torch.Generator().manual_seed(2))
    x[:, 12:] = cached.mask_id
    ctx = StepContext(t=1.0, s=0.5, editable=torch.ones(2, L, dtype=torch.bool), options=SampleOptions())
    other = StepContext(t=1.0, s=0.5, editable=torch.ones(2, L, dtype=torch.bool), options=SampleOptions())
    with torch.no_grad():
        # lo again = the cache is complete and no clean token is fed; a roll back to 4 needs the
        # clean output at 3, which is no longer kept
        for lo in (0, 0, 4, 4, 8, 12, 12, 8, 12, 4, 4):
            got = cached._network_logits(net, x, lo, lo + 4, 1.0, ctx)
            ref = plain._network_logits(net, x, lo, lo + 4, 1.0, other)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
            assert ctx.run_cache["block_kv"].length == lo


OPTIONS = [SampleOptions(), SampleOptions(remasking="low_confidence"),
           SampleOptions(remasking="low_confidence", threshold=0.3), GREEDY_TAU_1]


@pytest.mark.parametrize("opt", range(len(OPTIONS)))
@pytest.mark.parametrize("time_conditioning", [False, True])
@pytest.mark.parametrize("shift", [False, True])
def test_kv_cache_decoding_on_the_adapter_draws_the_tokens_of_the_recomputed_path(
        pretrained, shift, time_conditioning, opt):
    folder, vocab = pretrained
    cached = block_process(vocab, 4, time_conditioning=time_conditioning)
    plain = block_process(vocab, 4, time_conditioning=time_conditioning, kv_cache=False)
    net = adapter(folder, cached, shift=shift)
    x = torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(4))
    editable = torch.zeros(B, L, dtype=torch.bool)
    editable[:, 5:] = True                          # a prompt that ends inside block 1
    a, b = (run_sampler(p, net, x, editable, steps=16, options=OPTIONS[opt],
                        generator=torch.Generator().manual_seed(0)) for p in (cached, plain))
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe
    assert (a.tokens[:, :5] == x[:, :5]).all() and (a.tokens < vocab).all()


# ---- before training: the pretrained model's greedy decoding -------------------------------------

def greedy_continuation(folder: Path, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """The HF model's own greedy AR continuation (argmax, full recompute each token): (1, n)."""
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    x = prompt
    with torch.no_grad():
        for _ in range(n):
            x = torch.cat([x, lm(x).logits[:, -1:].argmax(-1)], dim=1)
    return x[:, prompt.shape[1]:]


def decode(folder: Path, proc, prompt: torch.Tensor, n: int, **fields) -> torch.Tensor:
    """Threshold decoding of n tokens after the prompt (1, n), before any training."""
    net = adapter(folder, proc, **fields)
    P = prompt.shape[1]
    x = torch.cat([prompt, torch.zeros(1, n, dtype=torch.long)], 1)
    editable = torch.zeros_like(x, dtype=torch.bool)
    editable[:, P:] = True
    out = run_sampler(proc, net, x, editable, steps=n, options=GREEDY_TAU_1)
    return out.tokens[:, P:]


def prompt_ids(folder: Path) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(folder)
    return tok("to be or not to be, that is", return_tensors="pt").input_ids       # (1, P)


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("lora", [False, True])
def test_block_size_one_at_tau_one_is_the_pretrained_greedy_decoding(pretrained, lora, kv_cache):
    """Each block is one token whose (shifted) logits are the clean output of the token before
    it, which under block-causal attention with blocks of 1 (= causal attention) is the causal
    LM's own next-token prediction: τ = 1 (one commit per step, the most confident) with
    temperature 0 is greedy AR, token for token, with the mask token added, no time signal and
    LoRA (zero at init); with and without the KV cache."""
    folder, vocab = pretrained
    prompt = prompt_ids(folder)
    fields = dict(lora_rank=4, freeze_layers="half") if lora else {}
    got = decode(folder, block_process(vocab, 1, kv_cache=kv_cache), prompt, 16, **fields)
    assert torch.equal(got, greedy_continuation(folder, prompt, 16))


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_at_block_size_one_and_tau_one_decodes_its_greedy_continuation():
    """The same on the real SmolLM2-135M (recipe 3's adapter: half frozen, LoRA r=32, shift)."""
    from thunderdlm.judges.smollm2 import converted_dir, is_converted

    folder = converted_dir()
    if not is_converted(folder):
        pytest.skip(f"no converted SmolLM2 at '{folder}' (run `thunderdlm convert smollm2`)")
    tok = AutoTokenizer.from_pretrained(folder)
    prompt = tok("ROMEO: What light through yonder", return_tensors="pt").input_ids
    proc = block_process(len(tok), 1)
    got = decode(folder, proc, prompt, 12, freeze_layers="half", lora_rank=32)
    assert torch.equal(got, greedy_continuation(folder, prompt, 12))
