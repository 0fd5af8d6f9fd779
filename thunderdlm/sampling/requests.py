"""Turning a user request (length, prompt, infill template) into the loop's inputs.

An infill template is text with spans to generate written as ``[MASK:N]`` (N tokens) or ``[MASK]``
(one token), e.g. ``To be, or [MASK:12] the question``. Every other character is known text and is
never changed by sampling.

:func:`check_sample_args` checks every argument of a sampling call (types, ranges, finite numbers,
the step and length caps) before any work, so the CLI, the API and the server fail the same way.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch

from thunderdlm.errors import SamplingError

MASK_SPAN = re.compile(r"\[MASK(?::(\d+))?\]")

#: caps on one request, so an impossible one fails at once instead of running for hours
#: (raise them with the environment variables of the same names)
MAX_STEPS = int(os.environ.get("THUNDERDLM_MAX_STEPS", 10_000))
MAX_NEW_TOKENS = int(os.environ.get("THUNDERDLM_MAX_NEW_TOKENS", 1_000_000))
SEED_RANGE = (-2**63, 2**64 - 1)        # what torch.Generator.manual_seed accepts


def _bad(name: str, message: str) -> SamplingError:
    flag = "--" + name.replace("_", "-")
    return SamplingError(f"sampling argument '{name}' ({flag}): {message}")


def _int(name: str, value, lo: int, hi: int | None = None, cap: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"must be an integer, got {value!r} ({type(value).__name__})")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi:,}" if hi is not None else f"≥ {lo}"
        raise _bad(name, f"must be {bound}, got {value}{cap if hi is not None and value > hi else ''}")


def _float(name: str, value, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, f"must be a number, got {value!r} ({type(value).__name__})")
    low_ok = value > lo if lo_open else value >= lo
    if not (math.isfinite(value) and low_ok and value <= hi):
        raise _bad(name, f"must be a finite number in {'(' if lo_open else '['}{lo}, {hi}], got {value}")


def _text(name: str, value) -> None:
    if value is not None and not isinstance(value, str):
        raise _bad(name, f"must be a string, got {value!r} ({type(value).__name__})")


def check_sample_args(*, steps=64, n=1, length=None, max_new_tokens=None, seed=None, temperature=1.0,
                      top_k=0, top_p=1.0, block_length=None, threshold=None, prompt=None,
                      infill=None, stop=None, cfg_scale=0.0, do_sample=None,
                      num_return_sequences=None, gen_length=None, stop_strings=None) -> None:
    """SamplingError naming the first bad argument (and its CLI flag); nothing else is done.

    ``prompt`` may be a list of strings (a batch of prompts); ``do_sample`` None, True or False
    (transformers' switch: False is greedy decoding, True needs a temperature > 0). The other
    names of a setting (transformers' ``num_return_sequences``, ``stop_strings``, LLaDA's
    ``gen_length``) are checked under their own names."""
    _int("steps", steps, 1, MAX_STEPS, cap=" (the cap is THUNDERDLM_MAX_STEPS)")
    _int("n", n, 1)
    for name, value in (("length", length), ("block_length", block_length),
                        ("num_return_sequences", num_return_sequences)):
        if value is not None:
            _int(name, value, 1)
    for name, value in (("max_new_tokens", max_new_tokens), ("gen_length", gen_length)):
        if value is not None:
            _int(name, value, 1, MAX_NEW_TOKENS, cap=" (the cap is THUNDERDLM_MAX_NEW_TOKENS)")
    if seed is not None:
        _int("seed", seed, *SEED_RANGE)
    _float("temperature", temperature, 0.0, 1e6)
    _int("top_k", top_k, 0)
    _float("top_p", top_p, 0.0, 1.0, lo_open=True)
    if threshold is not None:
        _float("threshold", threshold, 0.0, 1.0)
    _float("cfg_scale", cfg_scale, 0.0, 1e6)
    if do_sample is not None and not isinstance(do_sample, bool):
        raise _bad("do_sample", f"must be True or False, got {do_sample!r} ({type(do_sample).__name__})")
    if do_sample and temperature == 0:
        raise _bad("temperature", "must be > 0 with do_sample=True (greedy decoding is do_sample=False)")
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise _bad("prompt", "a list of prompts must hold at least one prompt")
        for item in prompt:
            _text("prompt", item)
    else:
        _text("prompt", prompt)
    _text("infill", infill)
    for name, value in (("stop", stop), ("stop_strings", stop_strings)):
        stops = [value] if isinstance(value, str) or value is None else value
        if not isinstance(stops, (list, tuple)):
            raise _bad(name, f"must be a string or a list of strings, got {type(value).__name__}")
        for item in stops:
            _text(name, item)


@dataclass
class Request:
    x_init: torch.Tensor      # (n, L) known tokens (anything at editable positions)
    editable: torch.Tensor    # (n, L) bool: positions to generate


def parse_template(template: str, context: int | None = None) -> list[tuple[str, int]]:
    """[(known text, 0) | ("", n_masks)] segments, in order."""
    parts, pos = [], 0
    for m in MASK_SPAN.finditer(template):
        if m.start() > pos:
            parts.append((template[pos:m.start()], 0))
        n = int(m.group(1)) if m.group(1) else 1
        if n < 1:
            raise SamplingError(f"infill span '{m.group(0)}' must ask for at least 1 token")
        if context is not None and n > context:   # before any list of that size is built
            raise SamplingError(f"infill span '{m.group(0)}' asks for more tokens than the model's "
                                f"context ({context})")
        parts.append(("", n))
        pos = m.end()
    if pos < len(template):
        parts.append((template[pos:], 0))
    if not any(n for _, n in parts):
        raise SamplingError(f"infill template has no [MASK:N] span to fill: {template!r}")
    return parts


def build_request(tokenizer, context: int, *, length: int | None = None, prompt: str | None = None,
                  infill: str | None = None, n: int = 1) -> Request:
    """Token layout for ``n`` samples; raises SamplingError naming the problem when impossible."""
    if prompt is not None and infill is not None:
        raise SamplingError("give either --prompt or --infill, not both (a prompt is the infill "
                            "template 'PROMPT[MASK:length]')")
    if n < 1:
        raise SamplingError(f"--n must be ≥ 1, got {n}")
    if infill is not None:
        ids, editable = [], []
        for text, masks in parse_template(infill, context):
            seg = tokenizer.encode(text) if text else [0] * masks
            ids += seg
            editable += [masks > 0] * len(seg)
    else:
        ids = tokenizer.encode(prompt) if prompt else []
        if length is None:                      # the rest of the context after the prompt
            length = context - len(ids)
            if length < 1:
                raise SamplingError(f"the prompt has {len(ids)} tokens and fills the model's context "
                                    f"({context}); shorten it, or use --max-new-tokens to roll past it")
        if length < 1:
            raise SamplingError(f"--length must be ≥ 1 tokens to generate, got {length}")
        if len(ids) + length > context:         # before any list of that size is built
            raise SamplingError(f"the prompt ({len(ids)} tokens) + --length {length} needs "
                                f"{len(ids) + length} tokens but the model's context is {context}; "
                                "shorten the prompt or generate fewer tokens (or use --max-new-tokens)")
        editable = [False] * len(ids) + [True] * length
        ids = ids + [0] * length
    if len(ids) > context:
        what = "infill template" if infill is not None else f"prompt ({len(ids) - sum(editable)} tokens) + --length"
        raise SamplingError(f"the {what} needs {len(ids)} tokens but the model's context is {context}; "
                            "shorten the prompt or generate fewer tokens")
    x = torch.tensor(ids, dtype=torch.long).repeat(n, 1)
    e = torch.tensor(editable, dtype=torch.bool).repeat(n, 1)
    return Request(x, e)


@dataclass
class PromptsRequest(Request):
    """Several prompts × ``n`` samples in one left-padded canvas (``sampling/batched.py``).

    Row ``i·n + j`` is sample j of prompt i. Every row's generated columns are the same
    [start, start + new_tokens): the prompts are right-aligned against them and padded on the
    left, so a row's blocks and spans are the same columns as in every other row and the same
    positions as when it is sampled alone."""

    valid: torch.Tensor | None        # (B, L) bool, True on real columns; None when nothing is padded
    positions: torch.Tensor | None    # (B, L) long: each row's own positions (pads: 0); None likewise
    prompt_lengths: list[int]         # (B,) real prompt tokens of each row
    start: int                        # first generated column: row r's token k is at start + k
    # grid-aligned canvases (``build_grid_prompts_request``): row r's first generated column, its
    # token k is at starts[r] + k (``start`` is then the smallest); None: every row's is ``start``
    starts: list[int] | None = None


def _check_prompts(prompt_ids: list[list[int]], new_tokens: int, n: int) -> None:
    """What every canvas of several prompts needs: a prompt, n ≥ 1 rows each, a token to generate."""
    if not prompt_ids:
        raise SamplingError("sampling argument 'prompt': a list of prompts must hold at least one prompt")
    if n < 1:
        raise SamplingError(f"--n must be ≥ 1, got {n}")
    if new_tokens < 1:
        raise SamplingError(f"max_new_tokens must be ≥ 1 tokens to generate, got {new_tokens}")


def build_prompts_request(prompt_ids: list[list[int]], new_tokens: int, context: int, *, n: int = 1,
                          pad_id: int = 0) -> PromptsRequest:
    """Left-padded canvas of prompts (token ids) continued by ``new_tokens`` each, ``n`` rows per
    prompt (prompt-major). Columns: [pads | prompt | new_tokens]; the longest prompt has no pads.
    ``pad_id`` fills the pads (any id: they are hidden from the network, tested)."""
    _check_prompts(prompt_ids, new_tokens, n)
    lengths = [len(p) for p in prompt_ids for _ in range(n)]                       # (B,)
    P = max(lengths)
    if P + new_tokens > context:
        raise SamplingError(f"the longest prompt ({P} tokens) + {new_tokens} new tokens needs "
                            f"{P + new_tokens} tokens but the model's context is {context}")
    L = P + new_tokens
    x = torch.full((len(lengths), L), pad_id, dtype=torch.long)
    for r, ids in enumerate(p for p in prompt_ids for _ in range(n)):
        if ids:
            x[r, P - len(ids):P] = torch.tensor(ids, dtype=torch.long)
    x[:, P:] = 0                                                     # the canvas to generate
    editable = torch.zeros_like(x, dtype=torch.bool)
    editable[:, P:] = True
    valid = positions = None
    if min(lengths) < P:
        pad = torch.tensor([P - k for k in lengths])[:, None]                      # (B, 1)
        cols = torch.arange(L)[None, :]                                            # (1, L)
        valid = cols >= pad                                                        # (B, L)
        positions = (cols - pad).clamp(min=0)                                      # (B, L)
    return PromptsRequest(x, editable, valid, positions, lengths, P)


def build_grid_prompts_request(prompt_ids: list[list[int]], new_tokens: int, grid: int, *, n: int = 1,
                               pad_id: int = 0) -> PromptsRequest:
    """Canvas of prompts of any lengths for a process whose blocks lie on an absolute grid of
    ``grid`` positions (block diffusion), ``n`` rows per prompt (prompt-major).

    Row r (prompt length p_r) is padded on the left by a whole number of blocks,
    pad_r = (K − ⌊p_r/g⌋)·g with K = max_r ⌊p_r/g⌋, so column c is its position c − pad_r on the
    same grid: every row's first generated token falls in column block K, at column
    K·g + (p_r mod g) (``starts``), and column block K + b is the row's own b-th block. Rows that
    end before the canvas does are padded on the right. Pads (both sides) are not ``valid`` and
    have position 0. Width: K·g + max_r (p_r mod g) + new_tokens (may exceed the longest
    prompt + new_tokens by up to g − 1 columns; no row's position does)."""
    _check_prompts(prompt_ids, new_tokens, n)
    if grid < 1:
        raise SamplingError(f"the block grid must be ≥ 1, got {grid}")
    rows = [p for p in prompt_ids for _ in range(n)]
    lengths = [len(p) for p in rows]                                               # (B,)
    K = max(k // grid for k in lengths)
    pads = [(K - k // grid) * grid for k in lengths]
    starts = [K * grid + k % grid for k in lengths]
    L = max(starts) + new_tokens
    x = torch.full((len(rows), L), pad_id, dtype=torch.long)
    editable = torch.zeros_like(x, dtype=torch.bool)
    for r, ids in enumerate(rows):
        if ids:
            x[r, pads[r]:starts[r]] = torch.tensor(ids, dtype=torch.long)
        x[r, starts[r]:starts[r] + new_tokens] = 0                                 # the canvas to generate
        editable[r, starts[r]:starts[r] + new_tokens] = True
    cols = torch.arange(L)[None, :]                                                # (1, L)
    pad = torch.tensor(pads)[:, None]                                              # (B, 1)
    end = torch.tensor(starts)[:, None] + new_tokens                               # (B, 1)
    valid = (cols >= pad) & (cols < end)                                           # (B, L)
    positions = torch.where(valid, cols - pad, torch.zeros_like(cols - pad))       # (B, L)
    return PromptsRequest(x, editable, valid, positions, lengths, min(starts), starts)
