"""Batch-invariant padded sampling (``sampling/batched.py``, ``thunderdlm/rng.py``).

Row i of a padded batch of prompts of different lengths gets exactly the tokens it gets sampled
alone with the same seed: masked (one canvas, LLaDA blocks, low-confidence, threshold, prefix and
dual caches), block diffusion (its grid and KV cache), AR (KV cache), greedy and seeded, n > 1; the
processes that cannot pad are grouped by prompt length and stay exact. Tiny random networks in
fp32 on the CPU (no training is needed for invariance).
"""
from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from thunderdlm.config import from_dict
from thunderdlm.data.tokenizers import CharTokenizer
from thunderdlm.errors import SamplingError
from thunderdlm.models import ModelConfig
from thunderdlm.processes import PROCESSES, ProcessConfig, SampleOptions, build_process
from thunderdlm.rng import RowGenerators, row_seed
from thunderdlm.sampling.batched import batch_key, sample_prompts
from thunderdlm.sampling.loop import run_sampler
from thunderdlm.sampling.requests import build_prompts_request
from thunderdlm.sampling.rolling import StopRule

TOK = CharTokenizer(set("abcdefghij ."), eos=True)           # 13 ids, EOS = 12
CONTEXT = 40
PROMPTS = ["abc", "a", "hijj. abcd", "ba", "j"]           # 3, 1, 10, 2, 1 tokens
SEEDS = [11, 12, 13, None, 15]


def make_lm(process: str = "masked", backbone: str = "ddit", context: int = CONTEXT, eos: bool = True,
            model: dict | None = None, **fields):
    """A DiffusionLM-like bundle around a tiny, randomly initialised (and perturbed) network."""
    tok = TOK if eos else CharTokenizer(set("abcdefghij ."))
    proc = build_process(from_dict(ProcessConfig, {"name": process, **fields}), tok.vocab_size)
    torch.manual_seed(0)
    backbone = getattr(proc, "required_backbone", None) or backbone
    cfg = ModelConfig(name=backbone, n_layer=2, n_head=2, n_embd=32, cond_dim=16,
                      causal=process == "autoregressive" or backbone == "gpt" and process == "forcing",
                      **(model or {}))
    net = proc.build_network(cfg, context).eval()
    with torch.no_grad():                     # wake the zero-initialised layers: varied draws
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return types.SimpleNamespace(model=net, process=proc, tokenizer=tok, context=context,
                                 device=torch.device("cpu"))


def alone(lm, prompts, seeds, **kw) -> list[list[int]]:
    """Each prompt sampled on its own (its n rows together), concatenated prompt-major."""
    return [row for p, s in zip(prompts, seeds) for row in sample_prompts(lm, [p], seeds=[s], **kw)[0]]


# Confidence rankings compare probabilities across positions. With a rotary-only random network a
# prompt followed by masks gives several positions the same prediction at nearly the same
# probability (ties to ~1e-6), and a padded batch's logits differ from the unpadded ones in the last
# bits (~1e-6, test_padded_logits_match_the_unpadded_ones), which may reorder such a near-tie. The
# confidence cases use learned positions, which separate the positions by far more.
LEARNED = dict(pos_emb="learned")
CASES = {   # name: (process fields + backbone, sample_prompts keyword arguments)
    "masked-ddit-ancestral": (dict(), dict()),
    "masked-gpt-llada-blocks": (dict(backbone="gpt"), dict(block_length=4)),
    "masked-low-confidence": (dict(backbone="gpt", model=LEARNED),
                              dict(block_length=4, options=SampleOptions(remasking="low_confidence"))),
    "masked-random-remasking": (dict(), dict(block_length=4, options=SampleOptions(remasking="random"))),
    "masked-threshold": (dict(backbone="gpt", model=LEARNED),
                         dict(block_length=4, options=SampleOptions(threshold=0.3))),
    "masked-prefix-cache-ddit": (dict(prefix_cache=True), dict(block_length=4)),
    "masked-prefix-cache-low-confidence": (dict(backbone="gpt", model=LEARNED, prefix_cache=True),
                                           dict(block_length=4, options=SampleOptions(remasking="low_confidence"))),
    "masked-dual-cache": (dict(backbone="gpt", model=LEARNED, dual_cache=True),
                          dict(block_length=4, options=SampleOptions(threshold=0.5))),
    "masked-dual-cache-ddit": (dict(dual_cache=True), dict(block_length=6)),
    "masked-time-conditioned": (dict(time_conditioning=True, model=dict(time_conditioning=True)), dict()),
    "masked-top-k-p": (dict(), dict(options=SampleOptions(temperature=0.8, top_k=5, top_p=0.9))),
    "autoregressive-kv": (dict(process="autoregressive", backbone="gpt"), dict()),
    "autoregressive-recompute": (dict(process="autoregressive", backbone="gpt", kv_cache=False), dict()),
    "autoregressive-learned-positions": (dict(process="autoregressive", backbone="gpt",
                                              model=dict(pos_emb="learned")), dict()),
}


@pytest.mark.parametrize("greedy", [False, True], ids=["seeded", "greedy"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_row_of_a_padded_batch_equals_the_row_sampled_alone(case, greedy):
    fields, kw = CASES[case]
    lm = make_lm(**fields)
    if greedy:
        kw = {**kw, "options": dataclasses.replace(kw.get("options", SampleOptions()), temperature=0.0)}
    kw = dict(new_tokens=12, n=2, steps=12, stop=StopRule(None), **kw)
    canvases = set()
    batched, _ = sample_prompts(lm, PROMPTS, seeds=SEEDS[:3] + [21, 15],
                                callback=lambda info: canvases.add(info.rows), **kw)
    assert batched == alone(lm, PROMPTS, SEEDS[:3] + [21, 15], **kw)
    assert len(batched) == 10 and all(len(r) == 12 for r in batched)
    assert canvases == {tuple(range(10))}          # one padded batch for all five prompts
    if not greedy:                            # n = 2 samples of one prompt differ (own streams)
        assert batched[0] != batched[1]


@pytest.mark.parametrize("kv_cache", [True, False])
def test_block_diffusion_rows_with_whole_blocks_of_padding_are_exact(kv_cache):
    lm = make_lm("block", backbone="gpt", block_size=4, kv_cache=kv_cache)
    prompts, seeds = ["abc", "hijj. a", "a.bcdefghij", "abcdefghij ba."], [1, 2, 3, 4]   # 3, 7, 11, 14
    kw = dict(new_tokens=10, n=2, steps=6, stop=StopRule(None))
    canvases = set()
    batched, res = sample_prompts(lm, prompts, seeds=seeds, callback=lambda i: canvases.add(i.rows),
                                  **kw)
    assert batched == alone(lm, prompts, seeds, **kw)
    # lengths 3, 7, 11 (≡ 3 mod 4) and 14 (≡ 2): one grid-aligned batch (test_block_any_length.py)
    keys = {batch_key(lm.process, lm.model, len(p)) for p in prompts}
    assert keys == {("grid",)} and canvases == {tuple(range(8))}


def test_block_diffusion_threshold_decoding_is_batch_invariant():
    lm = make_lm("block", backbone="ddit", block_size=4)
    prompts, seeds = ["abc", "hijj. a", "", "abcd"], [5, 6, 7, 8]
    kw = dict(new_tokens=9, n=1, steps=9, stop=StopRule(None),
              options=SampleOptions(remasking="low_confidence", threshold=0.4))
    assert sample_prompts(lm, prompts, seeds=seeds, **kw)[0] == alone(lm, prompts, seeds, **kw)


@pytest.mark.parametrize("name", ["uniform", "score_entropy", "embedding", "forcing"])
def test_processes_that_cannot_pad_are_batched_by_prompt_length_and_stay_exact(name):
    lm = make_lm(name)
    prompts, seeds = ["abc", "cba", "a", "hij", "ab"], [1, 2, 3, 4, 5]
    kw = dict(new_tokens=8, n=2, steps=8, stop=StopRule(None))
    batched, res = sample_prompts(lm, prompts, seeds=seeds, **kw)
    assert batched == alone(lm, prompts, seeds, **kw)
    assert batched[0] != batched[1]
    lengths = {len(p) for p in prompts}
    assert {batch_key(lm.process, lm.model, n) for n in lengths} == {("length", n) for n in lengths}
    assert res.steps == len(lengths) * sample_prompts(lm, ["a"], seeds=[1], **kw)[1].steps


@pytest.mark.parametrize("fields", [dict(backbone="ddit"), dict(backbone="gpt", dual_cache=True),
                                    dict(process="autoregressive", backbone="gpt")])
def test_pads_are_invisible_their_token_ids_change_nothing(fields):
    lm = make_lm(**fields)
    ids = [TOK.encode(p) for p in PROMPTS]
    outs = []
    for pad_id in (0, 7, 12):
        req = build_prompts_request(ids, 10, CONTEXT, n=2, pad_id=pad_id)
        assert bool((req.x_init[~req.valid] == pad_id).all()) and int((~req.valid).sum()) > 0
        gen = RowGenerators.seeded(range(10))
        out = run_sampler(lm.process, lm.model, req.x_init, req.editable, steps=10, block_length=5,
                          options=SampleOptions(), generator=gen, valid=req.valid,
                          positions=req.positions)
        outs.append(out.tokens[:, req.start:])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_the_prompts_request_is_left_padded_with_each_rows_own_positions():
    req = build_prompts_request([[1, 2, 3], [4]], 2, 10, n=2, pad_id=9)
    assert req.x_init[:, :3].tolist() == [[1, 2, 3]] * 2 + [[9, 9, 4]] * 2
    assert req.start == 3 and req.prompt_lengths == [3, 3, 1, 1]
    assert req.editable[:, 3:].all() and not req.editable[:, :3].any()
    assert req.valid.tolist()[2] == [False, False, True, True, True]
    assert req.positions.tolist() == [[0, 1, 2, 3, 4]] * 2 + [[0, 0, 0, 1, 2]] * 2
    same = build_prompts_request([[1, 2], [3, 4]], 2, 10)
    assert same.valid is None and same.positions is None             # nothing padded: plain calls
    with pytest.raises(SamplingError, match="context is 4"):
        build_prompts_request([[1, 2, 3]], 2, 4)


def test_one_seeded_sample_per_prompt_equals_the_single_generator_run():
    """n = 1: row 0 of a prompt seeded s uses s itself, so it equals today's run_sampler call with
    one torch.Generator seeded s (the draws of a B = 1 batch are the same numbers)."""
    lm = make_lm(backbone="gpt")
    kw = dict(steps=12, block_length=4, options=SampleOptions(remasking="low_confidence"))
    batched = sample_prompts(lm, PROMPTS, new_tokens=12, seeds=[3, 4, 5, 6, 7], stop=StopRule(None), **kw)[0]
    for p, s, row in zip(PROMPTS, [3, 4, 5, 6, 7], batched):
        ids = TOK.encode(p)
        x = torch.tensor([ids + [0] * 12])
        editable = torch.arange(x.shape[1])[None] >= len(ids)
        ref = run_sampler(lm.process, lm.model, x, editable, generator=torch.Generator().manual_seed(s), **kw)
        assert row == ref.tokens[0, len(ids):].tolist()
    assert row_seed(7, 0) == 7 and len({row_seed(7, j) for j in range(4)} | {8, 9, 10}) == 7


@pytest.mark.parametrize("process", ["masked", "autoregressive", "block"])
def test_sample_prompts_equals_the_api_continuation_for_one_sample(process):
    from thunderdlm.api import DiffusionLM

    fields = dict(block_size=4) if process == "block" else {}
    lm = make_lm(process, backbone="gpt", **fields)
    api = DiffusionLM(None, types.SimpleNamespace(data=types.SimpleNamespace(seq_len=CONTEXT)),
                      lm.model, lm.process, TOK, torch.device("cpu"), None)
    ids = sample_prompts(lm, PROMPTS[:3], new_tokens=12, seeds=[1, 2, 3], steps=12)[0]
    for p, s, row in zip(PROMPTS, [1, 2, 3], ids):
        text = api.sample(p, max_new_tokens=12, steps=12, seed=s)[0][0]
        assert p + TOK.decode(row) == text


def test_prompts_past_the_context_roll_per_prompt_and_stay_batch_invariant():
    lm = make_lm(backbone="gpt", context=16)
    prompts, seeds = ["abc", "hijj. abcd", "a"], [1, 2, 3]
    kw = dict(new_tokens=10, n=2, steps=10, block_length=5, stop=StopRule(None))  # 10 + 10 > 16: rolls
    batched, res = sample_prompts(lm, prompts, seeds=seeds, **kw)
    assert batched == alone(lm, prompts, seeds, **kw)
    assert all(len(r) == 10 for r in batched)


def test_rows_are_cut_at_eos_and_stop_strings_and_the_cut_does_not_depend_on_the_batch():
    lm = make_lm(backbone="gpt")
    kw = dict(new_tokens=16, n=2, steps=16, block_length=4)
    rule = StopRule(TOK.eos_id, ("a",))
    batched, _ = sample_prompts(lm, PROMPTS, seeds=[1, 2, 3, 4, 5], stop=rule, **kw)
    assert batched == alone(lm, PROMPTS, [1, 2, 3, 4, 5], stop=rule, **kw)
    full, _ = sample_prompts(lm, PROMPTS, seeds=[1, 2, 3, 4, 5], stop=StopRule(None), **kw)
    for cut, whole in zip(batched, full):
        assert whole[:len(cut)] == cut                                 # a prefix of the uncut row
        assert TOK.eos_id not in cut and "a" not in TOK.decode(cut)
        if len(cut) < len(whole):                                      # cut right before the stop
            assert whole[len(cut)] == TOK.eos_id or TOK.decode([whole[len(cut)]]) == "a"
    assert any(len(c) < 16 for c in batched)


def test_callbacks_map_canvas_columns_to_rows_generated_tokens():
    lm = make_lm(backbone="gpt")
    last: dict[int, list[int]] = {}

    def callback(info):
        for b, r in enumerate(info.rows):
            last[r] = info.x[b, info.start:].tolist()
        assert info.x.shape[0] == len(info.rows)

    ids, _ = sample_prompts(lm, PROMPTS, new_tokens=8, n=2, seeds=[1] * 5, steps=8,
                            stop=StopRule(None), callback=callback)
    assert [last[r] for r in range(10)] == ids


def test_bad_arguments_are_named():
    lm = make_lm()
    with pytest.raises(SamplingError, match="2 seeds for 5 prompts"):
        sample_prompts(lm, PROMPTS, new_tokens=4, seeds=[1, 2])
    with pytest.raises(SamplingError, match="prompt 1 must be a string"):
        sample_prompts(lm, ["a", 3], new_tokens=4)
    with pytest.raises(SamplingError, match="non-empty list"):
        sample_prompts(lm, [], new_tokens=4)
    with pytest.raises(SamplingError, match="max_new_tokens"):
        sample_prompts(lm, ["a"], new_tokens=0)
    with pytest.raises(SamplingError, match="6 row generators for a batch of 2"):
        run_sampler(lm.process, lm.model, torch.zeros(2, 4, dtype=torch.long),
                    torch.ones(2, 4, dtype=torch.bool), steps=2, generator=RowGenerators.seeded(range(6)))


def test_every_process_declares_whether_it_pads_exactly():
    exact = {name for name, cls in PROCESSES.items() if cls.pads_exactly}
    assert exact == {"masked", "block", "autoregressive"}


# ---- the hf adapter (a tiny random Llama saved like a pretrained folder; position_ids (B, L)) ----

@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from tests.tiny_pretrained import tiny_pretrained
    from thunderdlm.data.tokenizers import HFTokenizer

    folder = tmp_path_factory.mktemp("tiny_llama_batched")
    state = torch.random.get_rng_state()
    tiny_pretrained(folder)
    torch.random.set_rng_state(state)
    return folder, HFTokenizer.from_path(folder)


def hf_lm(folder, tok, process, shift, **fields):
    from thunderdlm.models import build_model

    proc = build_process(from_dict(ProcessConfig, {"name": process, **fields}), tok.vocab_size)
    torch.manual_seed(0)
    cfg = ModelConfig(name="hf", path=str(folder), cond_dim=16, shift_logits=shift)
    model = build_model(cfg, proc.model_vocab_size, 64).eval()
    return types.SimpleNamespace(model=model, process=proc, tokenizer=tok, context=64,
                                 device=torch.device("cpu"))


@pytest.mark.parametrize("process,shift,fields,kw", [
    ("block", True, dict(block_size=2), dict(options=SampleOptions(remasking="low_confidence", threshold=0.9))),
    ("masked", True, dict(), dict(block_length=4)),
    ("masked", False, dict(dual_cache=True), dict(block_length=4)),
    ("autoregressive", False, dict(), dict()),
])
def test_the_hf_adapter_samples_padded_rows_as_alone(llama, process, shift, fields, kw):
    folder, tok = llama
    lm = hf_lm(folder, tok, process, shift, **fields)
    prompts = ["to be or not", "the slings", "", "whether tis nobler in the mind", "or to take"]
    seeds = [1, 2, 3, 4, 5]
    kw = dict(new_tokens=8, n=2, steps=8, stop=StopRule(None), **kw)
    batched, _ = sample_prompts(lm, prompts, seeds=seeds, **kw)
    assert batched == alone(lm, prompts, seeds, **kw)
    lengths = [len(tok.encode(p)) for p in prompts]
    keys = {batch_key(lm.process, lm.model, n) for n in lengths}
    assert len(keys) < len(prompts)                    # some prompts of different lengths batched


def test_a_canvas_dependent_wrapper_is_built_per_batch_run():
    """Classifier-free guidance hides each canvas's prompt columns: passed as a factory
    (x_init, editable) -> module, it is built for every padded canvas and stays batch-invariant."""
    from thunderdlm.sampling.guidance import Guided, unconditional_token

    lm = make_lm(backbone="gpt", model=LEARNED)
    built = []

    def guided(x, editable):
        built.append(tuple(x.shape))
        return Guided(lm.model, ~editable, unconditional_token(lm.process), 5.0)

    kw = dict(new_tokens=8, n=2, steps=8, block_length=4, stop=StopRule(None), model=guided)
    batched, _ = sample_prompts(lm, PROMPTS, seeds=[1, 2, 3, 4, 5], **kw)
    assert built[0] == (10, 18)                        # one canvas: 5 prompts × 2, 10 + 8 columns
    assert batched == alone(lm, PROMPTS, [1, 2, 3, 4, 5], **kw)
    assert batched != sample_prompts(lm, PROMPTS, seeds=[1, 2, 3, 4, 5], **{**kw, "model": None})[0]
