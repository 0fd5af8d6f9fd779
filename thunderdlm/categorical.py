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
    """Set logits outside the top-k / nucleus of ``softmax(logits)`` to −inf. ``logits``: (..., V).

    Top-k first, then top-p on what top-k kept (transformers' ``TopKLogitsWarper`` then
    ``TopPLogitsWarper``); give already-tempered logits (``warp_logits`` does both)."""
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


def warp_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0) -> torch.Tensor:
    """Logits of the distribution to sample from, in transformers' (and vLLM's) order: divide by
    the temperature, keep the top-k, then the nucleus of the *tempered* distribution
    softmax(logits / T) (so T changes which tokens top-p keeps). ``temperature > 0``; (..., V)."""
    return filter_logits(logits / temperature, top_k, top_p)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one index per row of (..., V) non-negative weights.

    ``generator``: a ``torch.Generator``, None, or per-row generators (``thunderdlm/rng.py``
    ``RowGenerators``, duck-typed here by its ``rand``: each row of dim 0 draws from its own)."""
    if generator is None or isinstance(generator, torch.Generator):
        u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float64)
    else:
        u = generator.rand(probs.shape, device=probs.device, dtype=torch.float64)
    gumbel_exp = 1e-10 - torch.log(u + 1e-10)          # Exp(1) draws
    return (probs.double() / gumbel_exp).argmax(dim=-1)


def draw_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample from ``warp_logits(logits)`` (temperature → top-k → top-p); greedy (the argmax of the
    raw logits, which no filter changes) when ``temperature == 0``. logits (..., V) -> (...)."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(warp_logits(logits.double(), temperature, top_k, top_p), dim=-1)
    return sample_categorical(probs, generator)
