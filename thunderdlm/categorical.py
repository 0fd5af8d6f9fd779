"""Turning logits into token draws: temperature, top-k, top-p (nucleus) and categorical sampling.

Sampling uses the Gumbel-max trick in exponential form (as the MDLM/SEDD code does):
``argmax_v p_v / E_v`` with ``E_v ~ Exp(1)`` draws v with probability ∝ p_v, so ``probs`` need not be
normalised and entries ≤ 0 are never chosen (unless all are).

This module sits below both the processes (whose steps draw tokens) and the sampling loop, and
imports nothing else from thunderdlm (``tests/test_layout.py`` checks it).
"""
from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to −inf. ``logits``: (..., V)."""
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass strictly before it already reaches top_p (always keep the first)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one index per row of (..., V) non-negative weights."""
    u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float64)
    gumbel_exp = 1e-10 - torch.log(u + 1e-10)          # Exp(1) draws
    return (probs.double() / gumbel_exp).argmax(dim=-1)


def draw_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample (or take the argmax when ``temperature == 0``) from filtered logits (..., V)."""
    logits = filter_logits(logits, top_k, top_p)
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    return sample_categorical(probs, generator)
