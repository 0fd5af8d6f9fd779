"""Confidence-based commits (LLaDA's parallel decoding) for processes without a mask to read.

The sampling loop asks a step to *decide* ``ctx.n_commit`` positions per row when
``remasking`` is ``low_confidence`` or ``random`` (``sampling/loop.py``). A masked process sees
which positions are undecided (the mask). Under uniform noise every token looks like a real token,
so ``uniform`` and ``score_entropy`` with the uniform graph keep the set of decided positions of
the current block in ``ctx.cache[DECIDED]`` (the loop clears the cache at every block): a decided
position is frozen at its committed token; the others keep following the process's own reverse
step until they are committed. The loop's schedule commits every position of a block by its last
step.
"""
from __future__ import annotations

import torch

from thunderdlm import rng
from thunderdlm.errors import SamplingError
from thunderdlm.processes.base import StepContext

DECIDED = "decided"   # ctx.cache key: (B, L) bool, positions already committed in this block


def select_confident(probs: torch.Tensor, cand: torch.Tensor, allowed: torch.Tensor,
                     ctx: StepContext) -> torch.Tensor:
    """(B, L) bool: the ``ctx.n_commit`` allowed positions of each row to commit now, and with a
    threshold τ (Fast-dLLM, ``ctx.options.threshold``) also every allowed position whose
    confidence exceeds τ.

    ``probs`` (B, L, V): the process's (untempered) estimate of p(x0 | x_t); ``cand`` (B, L): the
    token each position would be committed to; ``allowed`` (B, L): undecided editable positions.
    Positions are ranked by ``probs[cand]`` (LLaDA's low_confidence, and always under a threshold)
    or by a uniform draw (``random``).
    """
    opts = ctx.options
    if opts.remasking == "random" and opts.threshold is None:
        conf = rng.draw_spans(ctx.generator, allowed.any(dim=1), ctx.draw_spans, lambda g, r, c: rng.rand(
            cand[r, c].shape, g, device=cand.device), torch.zeros(cand.shape, device=cand.device))
    elif opts.remasking in ("low_confidence", "ancestral", "random"):
        conf = probs.gather(-1, cand.unsqueeze(-1)).squeeze(-1).float()                # (B, L)
    else:
        raise SamplingError(f"unknown remasking {opts.remasking!r}; "
                            "use ancestral, low_confidence or random")
    conf = torch.where(allowed, conf, torch.full_like(conf, float("-inf")))
    order = conf.argsort(dim=-1, descending=True)                                     # (B, L)
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    commit = allowed & (rank < ctx.n_commit[:, None])
    if opts.threshold is not None:
        commit |= allowed & (conf > opts.threshold)
    return commit


def decided_positions(x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """(B, L) bool: positions committed earlier in this block (all False at a block's start)."""
    decided = ctx.cache.get(DECIDED)
    if decided is None or decided.shape != x.shape:
        decided = torch.zeros_like(x, dtype=torch.bool)
        ctx.cache[DECIDED] = decided
    return decided
