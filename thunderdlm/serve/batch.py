"""Decoding one batch of jobs: their rows stacked into one canvas, one run of the sampling loop.

The rows of every job in the batch share the canvas layout and the settings (``Job.key``), so the
batch is exactly what ``DiffusionLM.sample`` would decode for the stacked prompts: a continuation
(``continue_tokens``, rolling past the context when asked) or an infill canvas. Prompts of different
lengths are not padded into one batch: the backbones' ``positions`` argument is one (L,) row shared
by the batch, so rows of other lengths would need per-row positions and key-padding masks to stay
exact; they wait for a batch of their own length instead.

While the loop runs, ``Tracker.on_step`` turns every step's canvas into the stream: the committed
prefix of each row's generated text (positions no longer noisy, left to right: block by block for
block diffusion, token by token for AR) as text deltas, and, for jobs that asked for it, the whole
canvas with masked positions marked (the live page draws it). It also ends the run when every job
in the batch has been cancelled.
"""
from __future__ import annotations

import math
import time

import torch

from thunderdlm.sampling.loop import StepInfo
from thunderdlm.sampling.rolling import StopRule, continue_tokens
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
        self.produced = [[] for _ in self.rows]        # ids generated in earlier rolling rounds
        self.lo = self.hi = 0                          # generated columns of the current canvas
        self.editable: torch.Tensor | None = None     # infill: generated positions (L,)

    def begin_round(self, editable: torch.Tensor) -> None:
        cols = editable[0].nonzero().flatten()
        self.lo, self.hi = int(cols[0]), int(cols[-1]) + 1

    def end_round(self, tokens: torch.Tensor, width: int) -> None:
        for r, row in enumerate(tokens[:, self.lo:self.lo + width].tolist()):
            self.produced[r] += row

    def on_step(self, info: StepInfo) -> None:
        if all(j.cancelled.is_set() for j in self.jobs):
            raise Cancelled()
        if not self.streaming:
            return
        x = info.x.cpu()
        noisy = self.lm.process.is_noisy(info.x).cpu()
        if self.editable is not None:                      # infill: the editable positions in order
            gen, gen_noisy = x[:, self.editable], noisy[:, self.editable]
        else:
            gen, gen_noisy = x[:, self.lo:self.hi], noisy[:, self.lo:self.hi]
        width = gen.shape[1]
        done = torch.where(gen_noisy.any(1), gen_noisy.int().argmax(1), torch.full_like(gen[:, 0], width))
        for r, (job, i) in enumerate(self.rows):
            if job.stream and (d := self.state[r].delta(self.produced[r] + gen[r, :int(done[r])].tolist())):
                job.emit("delta", (i, d))
            if job.states:
                job.emit("state", (i, self._state(info, r, x[r], noisy[r])))

    def _state(self, info: StepInfo, r: int, x: torch.Tensor, noisy: torch.Tensor) -> dict:
        """The row's canvas as segments [[text, kind]]: kind "p" known text, "c" decided, "m" still
        noisy (its text is the model's current guess)."""
        guess = info.x0_hat[r].cpu()
        tok = self.lm.tokenizer
        ids = x.tolist()
        if self.editable is not None:            # infill: every position of the canvas
            positions = range(len(ids))
            kinds = {p: ("m" if noisy[p] else "c") if self.editable[p] else "p" for p in positions}
            segs: list[list[str]] = []
        else:                                    # continuation: the text so far, then this round
            positions = range(self.lo, self.hi)
            kinds = {p: "m" if noisy[p] else "c" for p in positions}
            segs = [[self.rows[r][0].prompt_text, "p"], [tok.decode(self.produced[r]), "c"]]
        for pos in positions:
            kind = kinds[pos]
            i = int(guess[pos]) if kind == "m" else ids[pos]
            t = tok.decode([i]) if i < tok.vocab_size else "▒"        # no guess yet (a later block)
            if segs and segs[-1][1] == kind:
                segs[-1][0] += t
            else:
                segs.append([t, kind])
        decided = len(self.produced[r]) + sum(k == "c" for k in kinds.values())
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
    gen = _generator(lm, jobs)
    opts = dict(temperature=s.temperature, top_p=s.top_p, remasking=s.remasking,
                block_length=s.block_length, threshold=s.threshold)
    rows = len(tracker.rows)
    if jobs[0].editable is not None:
        x = torch.tensor(jobs[0].prompt_ids).repeat(rows, 1)
        editable = torch.tensor(jobs[0].editable).repeat(rows, 1)
        tracker.editable = editable[0]
        res = lm.sample_tokens(x, editable, steps=s.steps, generator=gen, callback=tracker.on_step, **opts)
        new = res.tokens.cpu()[:, editable[0]]
    else:
        grid = lm.process.block_grid

        def run(x, editable, stop_fn):
            g = int(editable[0].sum())
            width = s.block_length or grid or g
            share = max(math.ceil(s.steps * g / s.max_tokens), math.ceil(g / width))
            tracker.begin_round(editable)
            out = lm.sample_tokens(x, editable, steps=share, generator=gen, callback=tracker.on_step,
                                   stop=stop_fn, **opts)
            tracker.end_round(out.tokens.cpu(), min(g, out.generated // rows) if out.stopped else g)
            return out

        prompt = torch.tensor([j.prompt_ids for j in jobs for _ in range(j.n)], dtype=torch.long,
                              device=lm.device).reshape(rows, -1)
        new, res = continue_tokens(run, prompt, s.max_tokens, lm.context, grid, rule, lm.tokenizer.decode)
        new = new.cpu()
    results = [tracker.finish(r, row, rule) for r, row in enumerate(new.tolist())]
    seconds = time.perf_counter() - t0
    at = 0
    for job in jobs:
        job.emit("done", JobResult(results[at:at + job.n], res.nfe, res.steps, rows,
                                   res.tokens_per_call, seconds))
        at += job.n
    return sum(r.completion_tokens for r in results), res.nfe
