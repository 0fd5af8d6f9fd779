"""One generic sampling loop over any process's ``step`` (DESIGN.md §2, "Sampler").

The loop owns what is not a process's math:

- the time grid (``steps`` reverse steps from t = 1 to t = 0),
- what may change: ``editable`` marks generated positions; a prompt or an infill template's known
  text is everything else, and the loop re-imposes it after every step, so it can never change;
- semi-autoregressive blocks (LLaDA, §2.3): the editable region is cut into consecutive blocks of
  ``block_length`` positions, decoded left to right, each with its own sweep t: 1 → 0;
- parallel-decoding schedules: with confidence-based remasking the loop tells the step how many
  positions to commit (``n_j = ⌊K/spb⌋ + [j < K mod spb]``, so that a block of K noisy positions is
  finished after exactly its ``spb`` steps);
- a per-step callback (the CLI's live "crystallising" display uses it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from thunderdlm.errors import SamplingError
from thunderdlm.processes.base import Process, SampleOptions, StepContext


@dataclass
class StepInfo:
    step: int                 # 1-based index over all blocks
    total: int
    block: int
    x: torch.Tensor           # (B, L) state after this step
    x0_hat: torch.Tensor      # (B, L) current guess of the clean tokens


@dataclass
class SampleResult:
    tokens: torch.Tensor      # (B, L)
    nfe: int                  # network evaluations actually made
    steps: int


def transfer_schedule(k: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's get_num_transfer_tokens: (B,) counts → (B, steps) per-step commits summing to k."""
    base = (k // steps)[:, None].expand(-1, steps)
    extra = torch.arange(steps, device=k.device)[None, :] < (k % steps)[:, None]
    return base + extra.long()


def block_ranges(editable: torch.Tensor, block_length: int | None) -> list[tuple[int, int]]:
    """[lo, hi) position ranges covering the editable columns, ``block_length`` wide each."""
    cols = editable.any(dim=0).nonzero().flatten()
    if cols.numel() == 0:
        return []
    lo, hi = int(cols[0]), int(cols[-1]) + 1
    if not block_length or block_length >= hi - lo:
        return [(lo, hi)]
    if block_length < 1:
        raise SamplingError(f"--block-length must be ≥ 1, got {block_length}")
    return [(a, min(a + block_length, hi)) for a in range(lo, hi, block_length)]


def split_steps(steps: int, n_blocks: int) -> list[int]:
    if steps < n_blocks:
        raise SamplingError(f"--steps {steps} is fewer than the {n_blocks} blocks to decode; "
                            f"use at least {n_blocks} steps or a larger --block-length")
    return [steps // n_blocks + (b < steps % n_blocks) for b in range(n_blocks)]


@torch.no_grad()
def run_sampler(process: Process, model: nn.Module, x_init: torch.Tensor, editable: torch.Tensor, *,
                steps: int, block_length: int | None = None, options: SampleOptions | None = None,
                generator: torch.Generator | None = None,
                callback: Callable[[StepInfo], None] | None = None) -> SampleResult:
    """Generate the ``editable`` positions of ``x_init`` (B, L); other positions are kept."""
    if steps < 1:
        raise SamplingError(f"--steps must be ≥ 1, got {steps}")
    options = options or SampleOptions()
    editable = editable.bool()
    prior = process.prior(tuple(x_init.shape), x_init.device, generator)
    x = torch.where(editable, prior, x_init)
    blocks = block_ranges(editable, block_length)
    per_block = split_steps(steps, len(blocks)) if blocks else []
    ctx = StepContext(t=1.0, s=1.0, editable=editable, options=options, generator=generator)
    done, total = 0, sum(per_block)
    positions = torch.arange(x.shape[1], device=x.device)
    for b, ((lo, hi), spb) in enumerate(zip(blocks, per_block)):
        ctx.editable = editable & ((positions >= lo) & (positions < hi))[None, :]
        ctx.pending = editable & (positions >= hi)[None, :]
        ctx.cache.clear()
        schedule = None
        if options.remasking != "ancestral":
            k = (process.is_noisy(x) & ctx.editable).sum(dim=1)
            schedule = transfer_schedule(k, spb)
        for j in range(spb):
            ctx.t, ctx.s = 1.0 - j / spb, 1.0 - (j + 1) / spb
            ctx.n_commit = schedule[:, j] if schedule is not None else None
            out = process.step(model, x, ctx)
            x = torch.where(ctx.editable, out.x, x)       # the contract: nothing else may change
            done += 1
            if callback is not None:
                callback(StepInfo(done, total, b, x, torch.where(ctx.editable, out.x0_hat, x)))
    ctx.editable, ctx.pending = editable, None
    x = torch.where(editable, process.finalize(model, x, ctx), x)
    return SampleResult(x, ctx.nfe, total)
