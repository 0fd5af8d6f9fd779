"""Block diffusion: prompts of any lengths in one grid-aligned batch, each row exactly as alone.

``requests.build_grid_prompts_request`` pads each row by whole blocks, so the loop's column blocks
are every row's own position blocks; ``loop.row_steps`` / ``_row_schedule`` give each row its own
steps, times and commit counts per block, and ``rng.draw_spans`` makes each row draw over its own
span only. Tiny random networks in fp32 on the CPU: random rotary DDiT and GPT with learned
positions, with and without the KV cache, time-conditioned and not, fixed steps with ancestral /
low_confidence / random remasking and threshold decoding, greedy and seeded; prompts of every
length 0..2g+1 mixed, n = 2. Confidence rankings use learned positions (near-ties of a random
rotary network, see test_batched.py).
"""
from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from thunderdlm.processes import SampleOptions
from thunderdlm.processes.block.process import BlockDiffusionProcess
from thunderdlm.processes.discrete.masked import MaskedProcess
from thunderdlm.sampling.batched import batch_key, sample_prompts
from thunderdlm.sampling.requests import build_grid_prompts_request
from thunderdlm.sampling.rolling import StopRule

from tests.sampling.test_batched import CONTEXT, TOK, alone, make_lm

G = 4
# lengths 0..2g+1 = 0..9, mixed order: every residue mod 4 and three different first blocks
PROMPTS = ["abcdefg", "", "hij", "a.bcdefg", "ab", "hijj", "j", "abcde", "ba.cdefgh", "abcdef"]
SEEDS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 35]
LEARNED = dict(backbone="gpt", model=dict(pos_emb="learned"))
TIMED = dict(backbone="ddit", time_conditioning=True, model=dict(time_conditioning=True))
CASES = {   # name: (process fields, options)
    "ddit-ancestral": (dict(backbone="ddit"), SampleOptions()),
    "ddit-ancestral-no-cache": (dict(backbone="ddit", kv_cache=False), SampleOptions()),
    "gpt-ancestral": (dict(backbone="gpt"), SampleOptions()),
    "learned-ancestral-no-cache": (dict(**LEARNED, kv_cache=False), SampleOptions()),
    "learned-low-confidence": (LEARNED, SampleOptions(remasking="low_confidence")),
    "learned-low-confidence-no-cache": (dict(**LEARNED, kv_cache=False),
                                        SampleOptions(remasking="low_confidence")),
    "learned-random": (LEARNED, SampleOptions(remasking="random")),
    "learned-threshold": (LEARNED, SampleOptions(threshold=0.3)),
    "learned-threshold-no-cache": (dict(**LEARNED, kv_cache=False), SampleOptions(threshold=0.3)),
    "time-conditioned-ancestral": (TIMED, SampleOptions()),
    "time-conditioned-no-cache": (dict(**TIMED, kv_cache=False), SampleOptions()),
    "time-conditioned-threshold": (TIMED, SampleOptions(threshold=0.2)),
}


def run_both(lm, options, prompts=PROMPTS, seeds=SEEDS, **kw):
    kw = dict(new_tokens=11, n=2, steps=7, stop=StopRule(None), options=options, **kw)
    canvases = set()
    batched, res = sample_prompts(lm, prompts, seeds=seeds, callback=lambda i: canvases.add(i.rows),
                                  **kw)
    return batched, alone(lm, prompts, seeds, **kw), canvases


@pytest.mark.parametrize("greedy", [False, True], ids=["seeded", "greedy"])
@pytest.mark.parametrize("case", list(CASES))
def test_rows_of_any_prompt_length_share_one_batch_each_as_alone(case, greedy):
    fields, options = CASES[case]
    lm = make_lm("block", block_size=G, **fields)
    if greedy:
        options = dataclasses.replace(options, temperature=0.0)
    batched, solo, canvases = run_both(lm, options)
    assert batched == solo
    assert canvases == {tuple(range(2 * len(PROMPTS)))}           # one canvas for every length
    assert {batch_key(lm.process, lm.model, len(p)) for p in PROMPTS} == {("grid",)}
    if not greedy:
        assert batched[0] != batched[1]                           # n = 2: own streams


@pytest.mark.parametrize("case", ["ddit-ancestral", "learned-threshold", "learned-random"])
def test_one_sample_per_prompt_equals_the_api_continuation(case):
    from thunderdlm.api import DiffusionLM

    fields, options = CASES[case]
    lm = make_lm("block", block_size=G, **fields)
    api = DiffusionLM(None, types.SimpleNamespace(data=types.SimpleNamespace(seq_len=CONTEXT)),
                      lm.model, lm.process, TOK, torch.device("cpu"), None)
    ids = sample_prompts(lm, PROMPTS, new_tokens=11, seeds=SEEDS, steps=7, options=options)[0]
    o = options
    for p, s, row in zip(PROMPTS, SEEDS, ids):
        text = api.sample(p, max_new_tokens=11, steps=7, seed=s, temperature=o.temperature,
                          remasking=o.remasking, threshold=o.threshold)[0][0]
        assert p + TOK.decode(row) == text


def _collapse_times(monkeypatch):
    """A mutation: every row steps with the first row's t, s (as a shared schedule would)."""
    real = MaskedProcess._ancestral_commit

    def one_time(self, masked, ctx):
        if isinstance(ctx.t, torch.Tensor):
            ctx.t, ctx.s = float(ctx.t.max()), float(ctx.s.max())
        return real(self, masked, ctx)
    monkeypatch.setattr(MaskedProcess, "_ancestral_commit", one_time)


@pytest.mark.parametrize("mutation", ["shared-t", "union-draws", "shared-sigma"])
def test_the_exactness_test_fails_without_per_row_times_or_spans(monkeypatch, mutation):
    options = SampleOptions()
    if mutation == "shared-t":
        lm = make_lm("block", block_size=G, backbone="ddit")
        _collapse_times(monkeypatch)
    elif mutation == "union-draws":
        lm = make_lm("block", block_size=G, backbone="ddit")
        monkeypatch.setattr(MaskedProcess, "_row_spans", lambda self, ctx, active, lo, hi: None)
    else:       # a time-conditioned network fed the first row's σ(t) for every row (threshold: t
        lm = make_lm("block", block_size=G, **TIMED)   # reaches nothing else), seeded
        options = SampleOptions(threshold=0.2)
        real = BlockDiffusionProcess._step_sigma

        def one_sigma(self, B, lo, hi, start, t, device):
            return real(self, B, lo, hi, start, float(t[0]) if isinstance(t, torch.Tensor) else t, device)
        monkeypatch.setattr(BlockDiffusionProcess, "_step_sigma", one_sigma)
    batched, solo, _ = run_both(lm, options)
    assert batched != solo


def test_the_canvas_pads_whole_blocks_and_right_pads_the_short_rows():
    req = build_grid_prompts_request([[1] * 5, [], [2] * 3, [3] * 9], 6, G)
    # K = ⌊9/4⌋ = 2: pads 4, 8, 8, 0; first generated columns 8 + p mod 4 = 9, 8, 11, 9
    assert req.starts == [9, 8, 11, 9] and req.start == 8 and req.x_init.shape == (4, 17)
    for r, (pad, p) in enumerate([(4, 5), (8, 0), (8, 3), (0, 9)]):
        s = req.starts[r]
        assert req.editable[r].nonzero().flatten().tolist() == list(range(s, s + 6))
        assert req.valid[r].nonzero().flatten().tolist() == list(range(pad, s + 6))
        assert req.positions[r, pad:s + 6].tolist() == list(range(p + 6))     # its own positions
        assert (pad % G, (s - pad) % G) == (0, p % G)                        # same grid as alone


def test_a_canvas_wider_than_the_context_falls_back_to_residue_groups_and_stays_exact():
    lm = make_lm("block", block_size=G, backbone="gpt", context=16)
    # 8 + max(3, 0) + 5 = 16 fits; "abcdefghij" (10: 8 + 2) with "hij" (3) → 8 + 3 + 5 = 16 fits,
    # "a.bcdefgh" (9) with "hij" (3) and 6 new → 8 + 3 + 6 = 17 > 16: two canvases (≡ 1, ≡ 3)
    prompts, seeds = ["a.bcdefgh", "hij"], [1, 2]
    canvases = set()
    kw = dict(new_tokens=6, n=1, steps=6, stop=StopRule(None))
    batched, _ = sample_prompts(lm, prompts, seeds=seeds, callback=lambda i: canvases.add(i.rows), **kw)
    assert batched == alone(lm, prompts, seeds, **kw)
    assert canvases == {(0,), (1,)}


def test_stops_and_callbacks_use_each_rows_own_columns():
    lm = make_lm("block", block_size=G, backbone="gpt")
    last: dict[int, list[int]] = {}

    def callback(info):
        assert isinstance(info.start, tuple) and info.length == 16
        for b, r in enumerate(info.rows):
            last[r] = info.x[b, info.start[b]:info.start[b] + info.length].tolist()

    kw = dict(new_tokens=16, n=1, steps=16)
    full, _ = sample_prompts(lm, PROMPTS, seeds=SEEDS, stop=StopRule(None), callback=callback, **kw)
    assert [last[r] for r in range(len(PROMPTS))] == full
    rule = StopRule(TOK.eos_id, ["a"])
    cut, _ = sample_prompts(lm, PROMPTS, seeds=SEEDS, stop=rule, **kw)
    assert cut == alone(lm, PROMPTS, SEEDS, stop=rule, **kw)
    for c, whole in zip(cut, full):
        assert whole[:len(c)] == c
    assert any(len(c) < 16 for c in cut)
