"""Turning a user request (length, prompt, infill template) into the loop's inputs.

An infill template is text with spans to generate written as ``[MASK:N]`` (N tokens) or ``[MASK]``
(one token), e.g. ``To be, or [MASK:12] the question``. Every other character is known text and is
never changed by sampling.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from thunderdlm.errors import SamplingError

MASK_SPAN = re.compile(r"\[MASK(?::(\d+))?\]")


@dataclass
class Request:
    x_init: torch.Tensor      # (n, L) known tokens (anything at editable positions)
    editable: torch.Tensor    # (n, L) bool: positions to generate


def parse_template(template: str) -> list[tuple[str, int]]:
    """[(known text, 0) | ("", n_masks)] segments, in order."""
    parts, pos = [], 0
    for m in MASK_SPAN.finditer(template):
        if m.start() > pos:
            parts.append((template[pos:m.start()], 0))
        n = int(m.group(1)) if m.group(1) else 1
        if n < 1:
            raise SamplingError(f"infill span '{m.group(0)}' must ask for at least 1 token")
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
        for text, masks in parse_template(infill):
            seg = tokenizer.encode(text) if text else [0] * masks
            ids += seg
            editable += [masks > 0] * len(seg)
    else:
        length = context if length is None and not prompt else length
        if length is None or length < 1:
            raise SamplingError(f"--length must be ≥ 1 tokens to generate, got {length}")
        ids = tokenizer.encode(prompt) if prompt else []
        editable = [False] * len(ids) + [True] * length
        ids = ids + [0] * length
    if len(ids) > context:
        what = "infill template" if infill is not None else f"prompt ({len(ids) - sum(editable)} tokens) + --length"
        raise SamplingError(f"the {what} needs {len(ids)} tokens but the model's context is {context}; "
                            "shorten the prompt or generate fewer tokens")
    x = torch.tensor(ids, dtype=torch.long).repeat(n, 1)
    e = torch.tensor(editable, dtype=torch.bool).repeat(n, 1)
    return Request(x, e)
