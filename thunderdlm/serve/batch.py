"""Decoding one batch of jobs: their rows stacked into one canvas, one run of the sampler.

Continuations go through ``sampling.batched.sample_prompts``: prompts of different lengths are
left-padded into one canvas whose generated columns are shared, each row with its own positions,
a key-padding mask and its own generator, so every row gets exactly the tokens it gets alone —
a seeded job's tokens are those of ``thunderdlm.load(RUN).sample(prompt, seed=…)`` whatever it was
batched with. The jobs of one batch share ``Job.key``: the settings and the sampler's exactness
group (``sampling.batched.batch_key``: any prompt length for masked and for block diffusion (its
grid-aligned canvas), the exact length for the whole-canvas processes). A job of n rows
with seed s is n prompts seeded ``rng.row_seed(s, j)``, as ``sample_prompts`` seeds sample j.

Infill canvases (a template, or prompt + suffix) are decoded as one canvas of that layout; a
seeded infill job is decoded alone, with a generator seeded by it.

While the loop runs, ``Tracker.on_step`` turns every step's canvas into the stream: the committed
prefix of each row's generated text (positions no longer noisy, left to right: block by block for
block diffusion, token by token for AR) as text deltas, and, for jobs that asked for it, the whole
canvas with masked positions marked (the live page draws it). It also ends the run when every job
in the batch has been cancelled.
"""
from __future__ import annotations

import time

import torch

from thunderdlm.processes.base import SampleOptions
from thunderdlm.rng import row_seed
from thunderdlm.sampling.batched import sample_prompts
from thunderdlm.sampling.guidance import Guided, unconditional_token
from thunderdlm.sampling.loop import StepInfo
from thunderdlm.sampling.rolling import StopRule
from thunderdlm.serve.jobs import Job, JobResult, RowResult


class Cancelled(Exception):
    """Every job of the batch was cancelled (clients gone): the loop is abandoned."""


class _Row:
    """Text already streamed for one row, and what is held back (a possible stop string, an
    unfinished multi-byte character) until more is decided."""

    def __init__(self, rule: StopRule, decode, hold: int):
        self.rule, self.decode, self.hold, self.sent = rule, decode, hold, ""

    def text_of(self, ids: list[int]) -> str:
        return self.rule.cut_text(self.decode(self.rule.cut_ids(ids)))

    def delta(self, ids: list[int], final: bool = False) -> str:
        text = self.text_of(ids)
        if not final:
            text = text[:max(len(text) - self.hold, 0)].rstrip("\ufffd")
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        out, self.sent = text[len(self.sent):], text
        return out


class Tracker:
    """The sampling loop's callback for one batch (see the module docstring)."""

    def __init__(self, lm, jobs: list[Job], rule: StopRule):
        self.lm, self.jobs = lm, jobs
        self.rows: list[tuple[Job, int]] = [(j, r) for j in jobs for r in range(j.n)]
        hold = max((len(s) for s in rule.strings), default=1) - 1
        self.state = [_Row(rule, lm.tokenizer.decode, hold) for _ in self.rows]
        self.streaming = any(j.stream or j.states for j in jobs)
        self.generated = [[] for _ in self.rows]       # continuation: each row's generated ids so far
        self.editable: torch.Tensor | None = None     # infill: generated positions (L,)

    def on_step(self, info: StepInfo) -> None:
        """Continuation (``sample_prompts``' callback): canvas row b is row ``info.rows[b]``, whose
        generated token ``info.offset + k`` sits in column ``info.start + k``. Infill: row b is row b."""
        if all(j.cancelled.is_set() for j in self.jobs):
            raise Cancelled()
        if not self.streaming:
            return
        x = info.x.cpu()
        noisy = self.lm.process.is_noisy(info.x).cpu()
        if self.editable is not None:                      # infill: the editable positions in order
            rows, gen, gen_noisy, offset = range(x.shape[0]), x[:, self.editable], noisy[:, self.editable], 0
        else:
            rows, offset = info.rows, info.offset
            cols = self._columns(info, x.shape)                              # (B, width)
            gen, gen_noisy = x.gather(1, cols), noisy.gather(1, cols)
        width = gen.shape[1]
        done = torch.where(gen_noisy.any(1), gen_noisy.int().argmax(1), torch.full_like(gen[:, 0], width))
        for b, r in enumerate(rows):
            job, i = self.rows[r]
            ids = self.generated[r][:offset] + gen[b].tolist()
            if self.editable is None:
                self.generated[r] = ids
            if job.stream and (d := self.state[r].delta(ids[:offset + int(done[b])])):
                job.emit("delta", (i, d))
            if job.states:
                job.emit("state", (i, self._state(info, b, r, x[b], noisy[b])))

    @staticmethod
    def _columns(info: StepInfo, shape: tuple[int, int]) -> torch.Tensor:
        """(B, width) long: the canvas columns of each row's generated tokens in this run —
        [start, start + length), ``start`` one column for all rows or one per row (a block
        grid's aligned canvas), ``length`` None: to the canvas's end."""
        B, L = shape
        starts = info.start if isinstance(info.start, tuple) else (info.start,) * B
        width = info.length if info.length is not None else L - max(starts)
        return torch.tensor(starts)[:, None] + torch.arange(width)[None, :]

    def _state(self, info: StepInfo, b: int, r: int, x: torch.Tensor, noisy: torch.Tensor) -> dict:
        """Canvas row b (row r) as segments [[text, kind]]: kind "p" known text, "c" decided, "m"
        still noisy (its text is the model's current guess)."""
        guess = info.x0_hat[b].cpu()
        tok = self.lm.tokenizer
        ids = x.tolist()
        if self.editable is not None:            # infill: every position of the canvas
            positions = range(len(ids))
            kinds = {p: ("m" if noisy[p] else "c") if self.editable[p] else "p" for p in positions}
            segs: list[list[str]] = []
            earlier = 0
        else:                                    # continuation: the text so far, then this round
            positions = self._columns(info, (len(info.rows), len(ids)))[b].tolist()
            kinds = {p: "m" if noisy[p] else "c" for p in positions}
            earlier = info.offset
            segs = [[self.rows[r][0].prompt_text, "p"], [tok.decode(self.generated[r][:earlier]), "c"]]
        for pos in positions:
            kind = kinds[pos]
            i = int(guess[pos]) if kind == "m" else ids[pos]
            t = tok.decode([i]) if i < tok.vocab_size else "▒"        # no guess yet (a later block)
            if segs and segs[-1][1] == kind:
                segs[-1][0] += t
            else:
                segs.append([t, kind])
        decided = earlier + sum(k == "c" for k in kinds.values())
        return {"step": info.step, "total": info.total, "decided": decided, "segments": segs}

    def finish(self, r: int, ids: list[int], rule: StopRule) -> RowResult:
        """The row's final text (cut at EOS / a stop string), its last delta and finish reason."""
        job, i = self.rows[r]
        if job.stream and (d := self.state[r].delta(ids, final=True)):
            job.emit("delta", (i, d))
        text = self.state[r].text_of(ids)
        cut = rule.cut_ids(ids)
        count = len(cut) if text == self.lm.tokenizer.decode(cut) else len(self.lm.tokenizer.encode(text))
        reason = "stop" if rule.row_stopped(ids, self.lm.tokenizer.decode) else "length"
        return RowResult(text, reason, count)


def _generator(lm, jobs: list[Job]) -> torch.Generator:
    gen = torch.Generator(device=lm.device)
    seed = jobs[0].seed if len(jobs) == 1 and jobs[0].seed is not None else torch.seed() % 2**63
    return gen.manual_seed(seed)


def run_batch(lm, jobs: list[Job]) -> tuple[int, int]:
    """Decode ``jobs`` (equal keys) as one batch and emit each job's deltas, states and result;
    returns (completion tokens, NFE). Raises what the sampler raises (a SamplingError,
    Cancelled); the caller reports it."""
    t0 = time.perf_counter()
    s = jobs[0].settings
    rule = StopRule(lm.tokenizer.eos_id, s.stop)
    tracker = Tracker(lm, jobs, rule)
    options = SampleOptions(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                            remasking=s.remasking, threshold=s.threshold)
    rows = len(tracker.rows)
    if jobs[0].editable is not None:
        x = torch.tensor(jobs[0].prompt_ids).repeat(rows, 1)
        editable = torch.tensor(jobs[0].editable).repeat(rows, 1)
        tracker.editable = editable[0]
        res = lm.sample_tokens(x, editable, steps=s.steps, generator=_generator(lm, jobs),
                               callback=tracker.on_step, temperature=s.temperature, top_k=s.top_k,
                               top_p=s.top_p, remasking=s.remasking, block_length=s.block_length,
                               threshold=s.threshold, cfg_scale=s.cfg_scale)
        region = res.tokens.cpu()[:, editable[0]].tolist()
    else:       # one prompt per row: job j's row i is seeded row_seed(seed_j, i), as sample(n=…) does
        prompts = [j.prompt_ids for j in jobs for _ in range(j.n)]
        seeds = [row_seed(j.seed, i) if j.seed is not None else None for j in jobs for i in range(j.n)]
        model = None
        if s.cfg_scale:               # a Guided wrapper per padded canvas: its known columns hidden
            null_id = unconditional_token(lm.process)

            def model(x_init: torch.Tensor, editable: torch.Tensor) -> Guided:
                return Guided(lm.model, ~editable.bool(), null_id, s.cfg_scale)
        _, res = sample_prompts(lm, prompts, new_tokens=s.max_tokens, seeds=seeds, steps=s.steps,
                                options=options, block_length=s.block_length, stop=rule,
                                callback=tracker.on_step, model=model)
        region = res.tokens.cpu().tolist()           # uncut (the finish reason reads the stop)
    results = [tracker.finish(r, row, rule) for r, row in enumerate(region)]
    seconds = time.perf_counter() - t0
    at = 0
    for job in jobs:
        job.emit("done", JobResult(results[at:at + job.n], res.nfe, res.steps, rows,
                                   res.tokens_per_call, seconds))
        at += job.n
    return sum(r.completion_tokens for r in results), res.nfe
