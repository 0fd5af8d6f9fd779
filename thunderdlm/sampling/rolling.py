"""Continuations of any length, and stopping at EOS or a stop string.

A model reads at most ``context`` tokens. A continuation that fits (prompt + new tokens ≤ context)
is one run of the sampling loop over one canvas, asked after each block whether every row has
stopped. A longer one rolls a window: each round keeps the last ``context − g`` tokens of the text
so far as the prompt and generates ``g`` more (``g`` = half the context, a whole number of the
process's blocks, so the generated blocks stay on its grid); the last round generates what is
left. Every round starts a fresh KV cache (block diffusion, AR) with one prefill of the kept text:
positions restart at 0, which every position embedding (learned tables included) supports.

A row has *stopped* when its generated text holds the tokenizer's EOS token or one of the stop
strings; ``cut`` trims a text before the first of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from thunderdlm.errors import SamplingError
from thunderdlm.sampling.loop import SampleResult


@dataclass
class StopRule:
    """EOS id (or None) and stop strings; both end a row's continuation."""

    eos_id: int | None
    strings: tuple[str, ...] = ()

    def row_stopped(self, ids: list[int], decode: Callable[[list[int]], str]) -> bool:
        if self.eos_id is not None and self.eos_id in ids:
            return True
        return bool(self.strings) and any(s in decode(ids) for s in self.strings)

    def cut_ids(self, ids: list[int]) -> list[int]:
        """Generated ids up to (not including) the first EOS."""
        if self.eos_id is not None and self.eos_id in ids:
            return ids[:ids.index(self.eos_id)]
        return ids

    def cut_text(self, text: str) -> str:
        """Text up to (not including) the first stop string."""
        ends = [text.index(s) for s in self.strings if s in text]
        return text[:min(ends)] if ends else text

    def cut_tokens(self, ids: list[int], decode: Callable[[list[int]], str]) -> list[int]:
        """Generated ids before the first EOS and before the first stop string: the longest
        prefix whose text lies within ``cut_text`` of the whole (a token that straddles the start
        of a stop string is dropped with it; with a char tokenizer the text is exactly cut_text's)."""
        ids = self.cut_ids(ids)
        if not self.strings:
            return ids
        text = decode(ids)
        kept = self.cut_text(text)
        if kept == text:
            return ids
        k = 0
        while k < len(ids) and len(decode(ids[:k + 1])) <= len(kept) and kept.startswith(decode(ids[:k + 1])):
            k += 1
        return ids[:k]

    @property
    def active(self) -> bool:
        return self.eos_id is not None or bool(self.strings)


def window_step(context: int, grid: int | None) -> int:
    """New tokens per rolling round: half the context, rounded down to whole blocks of ``grid``."""
    g = max(context // 2, 1)
    if grid:
        g = max(g // grid * grid, grid)
    if g >= context:
        raise SamplingError(f"the context ({context} tokens) is too short to roll a window of "
                            f"blocks of {grid}")
    return g


def continue_tokens(run: Callable[[torch.Tensor, torch.Tensor, Callable | None], SampleResult],
                    prompt: torch.Tensor, new_tokens: int, context: int, grid: int | None,
                    stop: StopRule, decode: Callable[[list[int]], str]) -> tuple[torch.Tensor, SampleResult]:
    """Continue ``prompt`` (n, P) by ``new_tokens`` (fewer when every row stops); returns the
    generated ids (n, G) and a result whose nfe / steps / generated cover every round.

    ``run(x_init, editable, stop_fn)`` is one sampling-loop run on a canvas."""
    if new_tokens < 1:
        raise SamplingError(f"max_new_tokens must be ≥ 1, got {new_tokens}")
    n = prompt.shape[0]
    text, produced = prompt, prompt.new_empty(n, 0)
    nfe = steps = generated = 0
    while produced.shape[1] < new_tokens:
        left = new_tokens - produced.shape[1]
        g = left if text.shape[1] + left <= context else min(left, window_step(context, grid))
        keep = text[:, max(text.shape[1] - (context - g), 0):]                 # (n, ≤ context − g)
        x = torch.cat([keep, keep.new_zeros(n, g)], dim=1)
        editable = torch.zeros_like(x, dtype=torch.bool)
        editable[:, keep.shape[1]:] = True

        def stopped(x_now: torch.Tensor, k: int = keep.shape[1]) -> bool:
            return all(stop.row_stopped(torch.cat([produced[r], x_now[r, k:]]).tolist(), decode)
                       for r in range(n))

        res = run(x, editable, stopped if stop.active else None)
        nfe, steps, generated = nfe + res.nfe, steps + res.steps, generated + res.generated
        width = min(g, res.generated // n) if res.stopped else g   # a stopped run left blocks out
        new = res.tokens[:, keep.shape[1]:keep.shape[1] + width]
        produced = torch.cat([produced, new], dim=1)
        text = torch.cat([text, new], dim=1)
        if res.stopped or (stop.active and stopped(torch.cat([keep, new], 1))):
            break
    return produced, SampleResult(produced, nfe, steps, generated, produced.shape[1] < new_tokens)

