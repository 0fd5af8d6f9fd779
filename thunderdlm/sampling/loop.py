"""One generic sampling loop over any process's ``step`` (DESIGN.md §2, "Sampler").

The loop owns what is not a process's math:

- the time grid (``steps`` reverse steps from t = 1 to t = 0),
- what may change: ``editable`` marks generated positions; a prompt or an infill template's known
  text is everything else, and the loop re-imposes it after every step, so it can never change;
- semi-autoregressive blocks (LLaDA, §2.3): the editable region is cut into consecutive blocks of
  ``block_length`` positions, decoded left to right, each with its own sweep t: 1 → 0; a process
  with a ``block_grid`` (block diffusion) has its blocks cut on that grid instead, and each of them
  gets at least one step (fewer ``steps`` than blocks become one step per block); there each row
  follows its own schedule (``row_steps``: the split of the steps over its own blocks), so rows
  whose editable columns cover different parts of a block (prompts of any lengths on a
  grid-aligned canvas, ``sampling/batched.py``) each step as they would alone;
- parallel-decoding schedules: with confidence-based remasking the loop tells the step how many
  positions to commit (``n_j = ⌊K/spb⌋ + [j < K mod spb]``, so that a block of K noisy positions is
  finished after exactly its ``spb`` steps);
- threshold decoding (Fast-dLLM, ``options.threshold``): each step commits every position whose
  confidence exceeds τ and at least one, and a block takes as many steps as that needs (at most
  its number of undecided positions); ``steps`` does not apply;
- a per-step callback (the CLI's live "crystallising" display uses it) and an optional ``stop``
  test after each block (EOS or a stop string: the rest stays undecided and is dropped by the
  caller).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from thunderdlm.errors import SamplingError
from thunderdlm.processes.base import Process, SampleOptions, StepContext
from thunderdlm.rng import RowGenerators


@dataclass
class StepInfo:
    step: int                 # 1-based index over all blocks
    total: int
    block: int
    x: torch.Tensor           # (B, L) state after this step
    x0_hat: torch.Tensor      # (B, L) current guess of the clean tokens
    # set by ``batched.sample_prompts`` (a padded batch of prompts): the returned rows of x's rows,
    # the first generated column (an int, or per row: start[b] on a block grid's aligned canvas),
    # the tokens generated in earlier rounds (rolled prompts) and the tokens each row generates in
    # this run (None: up to the canvas's end); row rows[b]'s generated token offset + k is
    # x[b, start + k] (x[b, start[b] + k]) for k < length
    rows: tuple[int, ...] | None = None
    start: int | tuple[int, ...] | None = None
    offset: int = 0
    length: int | None = None


@dataclass
class SampleResult:
    tokens: torch.Tensor      # (B, L)
    nfe: int                  # network evaluations actually made
    steps: int
    generated: int = 0        # editable positions decided, all rows together
    stopped: bool = False     # ``stop`` ended the run before every block was decoded

    @property
    def tokens_per_call(self) -> float:
        """Tokens each sequence gains per network evaluation (one call serves the whole batch):
        generated / (rows · nfe); 1 for AR decoding, up to the block size for block diffusion."""
        rows = max(self.tokens.shape[0], 1)
        return self.generated / (rows * self.nfe) if self.nfe else float("nan")


def transfer_schedule(k: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's get_num_transfer_tokens: (B,) counts → (B, steps) per-step commits summing to k."""
    base = (k // steps)[:, None].expand(-1, steps)
    extra = torch.arange(steps, device=k.device)[None, :] < (k % steps)[:, None]
    return base + extra.long()


def block_ranges(editable: torch.Tensor, block_length: int | None,
                 grid: int | None = None) -> list[tuple[int, int]]:
    """[lo, hi) position ranges covering the editable columns, ``block_length`` wide each, or cut
    at the multiples of ``grid`` when given (a process's own block grid; block_length is unused)."""
    cols = editable.any(dim=0).nonzero().flatten()
    if cols.numel() == 0:
        return []
    lo, hi = int(cols[0]), int(cols[-1]) + 1
    if grid:
        cuts = [lo] + list(range((lo // grid + 1) * grid, hi, grid)) + [hi]
        return list(zip(cuts[:-1], cuts[1:]))
    if not block_length or block_length >= hi - lo:
        return [(lo, hi)]
    if block_length < 1:
        raise SamplingError(f"--block-length must be ≥ 1, got {block_length}")
    return [(a, min(a + block_length, hi)) for a in range(lo, hi, block_length)]


def split_steps(steps: int, n_blocks: int, sizes: list[int] | None = None) -> list[int]:
    """Steps per block, in proportion to the blocks' ``sizes`` (equal by default), at least one
    each, summing to ``steps``; the remainder goes to the earliest of the largest shares."""
    if steps < n_blocks:
        raise SamplingError(f"--steps {steps} is fewer than the {n_blocks} blocks to decode; "
                            f"use at least {n_blocks} steps or a larger --block-length")
    sizes = sizes or [1] * n_blocks
    quota = [steps * s / sum(sizes) for s in sizes]
    out = [max(1, int(q)) for q in quota]
    while sum(out) < steps:
        i = max(range(n_blocks), key=lambda b: (quota[b] - out[b], -b))
        out[i] += 1
    while sum(out) > steps:
        i = max((b for b in range(n_blocks) if out[b] > 1), key=lambda b: (out[b] - quota[b], -b))
        out[i] -= 1
    return out


def check_options(process: Process, options: SampleOptions) -> None:
    """Options the process cannot honour are refused with a message naming them."""
    tau = options.threshold
    if tau is None:
        return
    if not process.supports_threshold:
        raise SamplingError(f"--threshold needs a process that shows undecided positions as a mask "
                            f"(masked, block); {process.name!r} does not")
    if not 0.0 <= tau <= 1.0:
        raise SamplingError(f"--threshold must be in [0, 1], got {tau}")


@torch.no_grad()
def run_sampler(process: Process, model: nn.Module, x_init: torch.Tensor, editable: torch.Tensor, *,
                steps: int, block_length: int | None = None, options: SampleOptions | None = None,
                generator: torch.Generator | RowGenerators | None = None,
                callback: Callable[[StepInfo], None] | None = None,
                stop: Callable[[torch.Tensor], bool] | None = None,
                valid: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> SampleResult:
    """Generate the ``editable`` positions of ``x_init`` (B, L); other positions are kept.

    ``stop(x[:, :hi])`` is asked after each block [lo, hi) with the canvas up to the block's end;
    True ends the run (later blocks stay undecided and are not counted as generated).

    A batch of prompts of different lengths (``sampling/batched.py``) is left-padded: ``valid``
    (B, L) bool marks each row's real columns (pads are hidden from every forward through the
    backbone's key-padding mask and never editable) and ``positions`` (B, L) long gives each
    row's own positions; ``generator`` may then be per-row ``RowGenerators`` (``thunderdlm/rng.py``)."""
    if steps < 1:
        raise SamplingError(f"--steps must be ≥ 1, got {steps}")
    options = options or SampleOptions()
    check_options(process, options)
    editable = editable.bool()
    if valid is not None:
        valid = valid.bool().to(x_init.device)
        if valid.shape != x_init.shape or bool((editable & ~valid).any()):
            raise SamplingError(f"valid must be a {tuple(x_init.shape)} bool mask covering every "
                                f"editable position, got {tuple(valid.shape)}")
    if positions is not None and positions.shape != x_init.shape:
        raise SamplingError(f"positions must be {tuple(x_init.shape)} (one row per sequence), got "
                            f"{tuple(positions.shape)}")
    if isinstance(generator, RowGenerators) and len(generator) != x_init.shape[0]:
        raise SamplingError(f"{len(generator)} row generators for a batch of {x_init.shape[0]} rows")
    prior = process.prior(tuple(x_init.shape), x_init.device, generator)
    x = torch.where(editable, prior, x_init)
    blocks = block_ranges(editable, block_length, process.block_grid)
    threshold = options.threshold is not None
    if process.block_grid:        # (B, blocks): each row's own split of the steps (row_steps)
        rows_spb = row_steps(editable, blocks, steps, process.block_grid)
        per_block = [0 if threshold else int(rows_spb[:, b].max()) for b in range(len(blocks))]
    else:
        sizes = [hi - lo for lo, hi in blocks]
        rows_spb = None
        per_block = ([0] * len(blocks) if threshold else split_steps(steps, len(blocks), sizes)) if blocks else []
    ctx = StepContext(t=1.0, s=1.0, editable=editable, options=options, generator=generator,
                      valid=valid, positions=None if positions is None else positions.to(x.device))
    done, total, stopped = 0, sum(per_block), False
    positions = torch.arange(x.shape[1], device=x.device)
    for b, ((lo, hi), spb) in enumerate(zip(blocks, per_block)):
        in_block = editable & ((positions >= lo) & (positions < hi))[None, :]
        ctx.editable = in_block
        ctx.pending = editable & (positions >= hi)[None, :]
        ctx.cache.clear()
        spbs = None if rows_spb is None else rows_spb[:, b]
        for ctx.t, ctx.s, ctx.n_commit, live in _block_schedule(process, lambda: x, ctx, spb, threshold,
                                                                spbs):
            # a row past its own schedule has nothing editable: the step changes and draws nothing
            ctx.editable = in_block if live is None else in_block & live[:, None]
            ctx.draw_spans = None
            out = process.step(model, x, ctx)
            x = torch.where(ctx.editable, out.x, x)       # the contract: nothing else may change
            done += 1
            if callback is not None:
                callback(StepInfo(done, max(total, done), b, x, torch.where(ctx.editable, out.x0_hat, x)))
        if stop is not None and b + 1 < len(blocks) and stop(x[:, :hi]):
            stopped = True
            editable = editable & (positions < hi)[None, :]
            break
    ctx.editable, ctx.pending = editable, None
    x = torch.where(editable, process.finalize(model, x, ctx), x)
    return SampleResult(x, ctx.nfe, done, int(editable.sum()), stopped)


def row_steps(editable: torch.Tensor, blocks: list[tuple[int, int]], steps: int,
              grid: int) -> torch.Tensor:
    """(B, len(blocks)) long: the steps row r takes in each column block on its own — its own
    grid blocks (``block_ranges`` of its editable columns), at least one step each, ``steps``
    split over them in proportion to their sizes — 0 in blocks where it has nothing to generate.

    Rows whose editable columns differ (block diffusion's grid-aligned prompts of any length,
    ``sampling/batched.py``) differ in their first and last blocks; a row's own blocks lie inside
    the column blocks (both cut on the same grid), so its b-th own block is one of them."""
    out = torch.zeros(editable.shape[0], len(blocks), dtype=torch.long)
    starts = [lo for lo, _ in blocks]
    for r in range(editable.shape[0]):
        own = block_ranges(editable[r:r + 1], None, grid)
        if not own:
            continue
        for (lo, hi), n in zip(own, split_steps(max(steps, len(own)), len(own), [h - l for l, h in own])):
            out[r, max(i for i, a in enumerate(starts) if a <= lo)] = n
    return out


def _block_schedule(process: Process, current: Callable[[], torch.Tensor], ctx: StepContext,
                    spb: int, threshold: bool, spbs: torch.Tensor | None = None):
    """(t, s, n_commit, live) of each step of one block. Fixed: ``spb`` steps on the grid 1 → 0,
    with LLaDA's commit counts under confidence remasking. Threshold: at least one commit per step
    until the block is decided (``current()`` is the state before each step), t falling by 1/K a
    step for a block of K undecided positions. ``live`` is None (every row steps).

    ``spbs`` (B,): the rows' own steps in this block (``row_steps``): each row follows its own
    schedule, as alone — fixed: t = 1 − j/spb_r for its spb_r steps; threshold: t = 1 − j/K_r for
    its own K_r undecided positions while it has any — and ``live`` (B,) bool marks the rows still
    on theirs at each step; t, s are then (B,) float64 (floats when every row's are the same)."""
    def noisy() -> torch.Tensor:
        return (process.is_noisy(current()) & ctx.editable).sum(dim=1)      # (B,)

    if spbs is not None:
        yield from _row_schedule(noisy, ctx, spbs.tolist(), threshold)
        return
    if threshold:
        k = noisy()
        K = max(int(k.max()), 1)
        one = torch.ones_like(k)
        for j in range(K):
            if j and not bool(noisy().any()):
                return
            yield 1.0 - j / K, 1.0 - (j + 1) / K, one, None
        return
    schedule = None
    if ctx.options.remasking != "ancestral":
        schedule = transfer_schedule(noisy(), spb)
    for j in range(spb):
        yield 1.0 - j / spb, 1.0 - (j + 1) / spb, (schedule[:, j] if schedule is not None else None), None


def _row_schedule(noisy: Callable[[], torch.Tensor], ctx: StepContext, spbs: list[int],
                  threshold: bool):
    """``_block_schedule`` with each row on its own: row r's j-th step has the t, s, n_commit of
    its alone run's j-th step in this block (``spbs[r]`` steps, or its K_r undecided positions)."""
    k = noisy()                                                             # (B,) at the block's start
    dev = k.device

    def times(j: int, n: list[int], live: torch.Tensor):
        # t_r = 1 − j/n_r, s_r = 1 − (j+1)/n_r as Python floats (the alone run's values, bit for bit)
        t = [1.0 - j / max(m, 1) for m in n]
        s = [1.0 - (j + 1) / max(m, 1) for m in n]
        if bool(live.all()) and len(set(n)) == 1:
            return t[0], s[0], None                                         # every row alike
        return torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64), live

    if threshold:
        K = [max(int(m), 1) for m in k.tolist()]
        one = torch.ones_like(k)
        for j in range(max(K)):
            live = torch.tensor([j < m for m in K], device=dev)
            if j:
                live &= noisy() > 0
            if not bool(live.any()):
                return
            t, s, flag = times(j, K, live)
            yield t, s, one, flag
        return
    schedule = None
    if ctx.options.remasking != "ancestral":                 # LLaDA's counts over each row's steps
        schedule = torch.zeros(len(spbs), max(spbs), dtype=torch.long, device=dev)
        for r, m in enumerate(spbs):
            if m:
                schedule[r, :m] = transfer_schedule(k[r:r + 1], m)[0]
    for j in range(max(spbs)):
        live = torch.tensor([j < m for m in spbs], device=dev)
        t, s, flag = times(j, spbs, live)
        yield t, s, (schedule[:, j] if schedule is not None else None), flag
