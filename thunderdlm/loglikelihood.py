"""Conditional log-likelihood log p(continuation | context): lm-eval's ``loglikelihood`` request.

Notation: the scored sequence is ``x = c ⊕ a``, a context ``c`` of P tokens (never noised) and a
continuation ``a`` of A tokens; the result is in nats (natural log), summed over the A tokens.

- **autoregressive** — exact: ``Σ_i log p_θ(a_i | BOS, c, a_<i)``, and lm-eval's ``is_greedy``
  (every a_i is the argmax given what precedes it).
- **masked** — LLaDA's Monte Carlo estimator (``get_log_likelihood.py``, SPEC.md §2.4): for rows
  j = 1..B of a batch draw k ~ U{1..A} and the stratified counts
  ``l_j = ((k − 1 + ⌊jA/B⌋) mod A) + 1`` (one cover of {1..A} per batch; LLaDA rounds where we
  floor, see ``cover_counts``), mask l_j continuation positions chosen uniformly without
  replacement (the context is never masked), and score

      ŝ_j = −(A / l_j) · Σ_{i masked} −log p_θ(a_i | x_masked)        (SUBS: no mass on the mask)

  ``E[ŝ]`` is the negative of masked diffusion's NELBO of ``a`` given ``c`` for a time-agnostic
  network, i.e. a lower bound on log p(a | c) (the any-order form of the bound, schedule-free: with
  masking probability t, ∫ w(t) P(l | t) dt = 1/l). A time-conditioned network
  (``process.time_conditioning``) needs a time, which this estimator has not: it gets the process's
  own form instead, t stratified, each continuation token masked with probability m(t), weight
  w(t) — the same expectation, more variance. The mean over ``mc_num`` rows is returned with its
  standard error (computed as if the rows were independent; the stratification makes the true one
  smaller).
- **block** (BD3-LM) — the same estimator inside every block that holds continuation tokens,
  all blocks in one ``x_t ⊕ x0`` forward (the training one): a block is denoised given the clean
  blocks before it, the context positions stay clean, and the per-block terms add up to the
  conditional bound Σ_b −NELBO(a_b | c, a_<b) (its parts before block b hold ``c`` and ``a``).
- the others (uniform, score-entropy, embedding, forcing) noise whole windows: their bound cannot
  hold the context clean, so they are refused by name (``nll()`` scores whole texts).

``cfg_scale`` w (masked, block): LLaDA scores the guided logits ``ℓ_u + (w+1)(ℓ_c − ℓ_u)`` with
the context masked in the unconditional pass (``sampling/guidance.py``); w = 0 is the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.errors import SamplingError
from thunderdlm.processes.block.attention import shifted_reads, training_plan, training_positions
from thunderdlm.processes.discrete.masked import stratified_times
from thunderdlm.sampling.guidance import Guided, unconditional_token

#: processes whose bound can keep the context clean
CONDITIONAL = ("autoregressive", "masked", "block")
NEG_INF = -1e6            # SUBS' large finite negative (masked.py)


@dataclass
class LogLikelihood:
    loglikelihood: float          # nats: log p(a | c), exact (AR) or a lower-bound estimate
    stderr: float                 # Monte Carlo standard error (0 when exact)
    tokens: int                   # A, the continuation's tokens
    context_tokens: int           # P
    exact: bool
    is_greedy: bool | None        # AR: a is the greedy continuation of c; None for diffusion


def check_conditional(process, cfg_scale: float) -> None:
    """Named errors for a process (or a guidance) the conditional likelihood does not support."""
    if process.name not in CONDITIONAL:
        raise SamplingError(f"loglikelihood() needs a process whose bound keeps the context clean "
                            f"({', '.join(CONDITIONAL)}); {process.name!r} noises whole windows — "
                            "score whole texts with nll()")
    if cfg_scale:
        unconditional_token(process)


@torch.no_grad()
def conditional_loglikelihood(process, model: nn.Module, context: list[int], continuation: list[int],
                              *, mc_num: int = 128, batch_size: int = 32, cfg_scale: float = 0.0,
                              generator: torch.Generator | None = None,
                              device: torch.device | str = "cpu") -> LogLikelihood:
    """log p(continuation | context) of token ids under ``process`` (see the module docstring)."""
    check_conditional(process, cfg_scale)
    x = torch.tensor(context + continuation, dtype=torch.long, device=device)       # (L,)
    P, A = len(context), len(continuation)
    if process.name == "autoregressive":
        return _autoregressive(process, model, x, P)
    rows = []
    for lo in range(0, mc_num, batch_size):
        b = min(batch_size, mc_num - lo)
        rows.append(_masked_rows(process, model, x, P, b, cfg_scale, generator))
    est = torch.cat(rows).double()                                                   # (mc_num,)
    se = est.std().item() / math.sqrt(mc_num) if mc_num > 1 else float("nan")
    return LogLikelihood(est.mean().item(), se, A, P, False, None)


def _autoregressive(process, model: nn.Module, x: torch.Tensor, P: int) -> LogLikelihood:
    logp = process.logits(model, x[None]).double().log_softmax(-1)[0, P:]           # (A, V)
    target = x[P:]
    ll = logp.gather(-1, target[:, None]).sum().item()
    greedy = bool((logp.argmax(-1) == target).all())
    return LogLikelihood(ll, 0.0, target.numel(), P, True, greedy)


def cover_counts(k: int, A: int, B: int, device=None) -> torch.Tensor:
    """(B,) mask counts in {1..A} spaced A/B apart from k: l_j = ((k − 1 + ⌊jA/B⌋) mod A) + 1.

    LLaDA rounds ``linspace(k, k + (B−1)A/B, B)`` instead of flooring; torch.round goes half to
    even, so when jA/B ends in .5 row j only ever gets even counts (A = 16, B = 32: half the rows)
    and, with k uniform, no longer a uniform count — a bias toward the larger counts: measured on
    runs/final_block16 (256 validation characters, blocks of 16, batch 32, 2048 draws each) at
    −588.8 ± 1.0 nats with rounding vs −582.6 ± 1.05 with the floor (the NELBO over 1024 t-draws:
    −584.2 ± 2.9). An integer offset keeps every row's count uniform on {1..A} (each row is then
    unbiased) and the batch a stratified cover."""
    j = torch.arange(B, device=device)
    return (k - 1 + (j * A) // B) % A + 1


def stratified_counts(A: int, B: int, device, generator: torch.Generator | None) -> torch.Tensor:
    """LLaDA's stratified mask counts l (B,): k ~ U{1..A}, then ``cover_counts``."""
    k = int(torch.randint(1, A + 1, (), device=device, generator=generator))
    return cover_counts(k, A, B, device)


def _choose(span: torch.Tensor, counts: torch.Tensor, L: int,
            generator: torch.Generator | None) -> torch.Tensor:
    """(B, L) bool: in each row, ``counts`` positions of the column list ``span`` uniformly
    without replacement (the first ones of a random permutation)."""
    B = counts.shape[0]
    keys = torch.rand(B, span.numel(), device=span.device, generator=generator)
    rank = keys.argsort(dim=1).argsort(dim=1)                                        # (B, |span|)
    out = torch.zeros(B, L, dtype=torch.bool, device=span.device)
    out[:, span] = rank < counts[:, None]
    return out


def _draw_masks(process, L: int, P: int, B: int, device,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Which continuation positions to mask, per block of the process's grid (one block, all of x,
    for masked diffusion): (masked (B, L) bool, weight (B, L), t_tok (B, L) or None).

    Time-agnostic network: LLaDA's counts, weight A_b / l_b (t_tok None). Time-conditioned: the
    process's own bound restricted to the continuation — t_b per (row, block) stratified, each
    continuation position masked with probability m(t_b), weight w(t_b) = −α'/(1 − α)."""
    bs = process.block_grid or L
    masked = torch.zeros(B, L, dtype=torch.bool, device=device)
    weight = torch.zeros(B, L, dtype=torch.float64, device=device)
    cont = torch.arange(L, device=device) >= P                                       # (L,)
    if process.cfg.time_conditioning:
        nb = -(-L // bs)
        t = stratified_times(B * nb, device, generator).view(B, nb)                  # (B, nb)
        t_tok = t.repeat_interleave(bs, dim=1)[:, :L]                                # (B, L)
        u = torch.rand(B, L, device=device, generator=generator)
        masked = (u < process.schedule.mask_prob(t_tok)) & cont
        return masked, process.schedule.nelbo_weight(t_tok).double(), t_tok
    for lo in range(P // bs * bs, L, bs):
        span = torch.arange(max(lo, P), min(lo + bs, L), device=device)              # a in block
        counts = stratified_counts(span.numel(), B, device, generator)                # (B,)
        masked |= _choose(span, counts, L, generator)
        weight[:, span] = (span.numel() / counts.double())[:, None]
    return masked, weight, None


def _masked_rows(process, model: nn.Module, x: torch.Tensor, P: int, B: int, cfg_scale: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """(B,) estimates of log p(a | c): −Σ_masked weight · CE (block diffusion: all blocks)."""
    L, dev = x.shape[0], x.device
    mask_id = process.mask_id
    masked, weight, t_tok = _draw_masks(process, L, P, B, dev, generator)
    x0 = x.expand(B, L)
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)                       # (B, L)
    known = torch.zeros(B, L, dtype=torch.bool, device=dev)
    known[:, :P] = True                                     # the context: masked when unguided
    if process.block_grid is None:
        net = Guided(model, known, mask_id, cfg_scale) if cfg_scale else model
        t = torch.zeros(B, device=dev) if t_tok is None else t_tok[:, 0]
        logits = net(xt, process.conditioning(t))                                    # (B, L, V+1)
    else:
        logits = _block_logits(process, model, xt, x0, known, cfg_scale, t_tok)
    logits = logits.float().clone()          # never write into the network's own output
    logits[..., mask_id] = NEG_INF                                                   # SUBS
    nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none").double()    # (B, L)
    return -(torch.where(masked, nll, torch.zeros_like(nll)) * weight).sum(dim=1)


def _block_logits(process, model: nn.Module, xt: torch.Tensor, x0: torch.Tensor, known: torch.Tensor,
                  cfg_scale: float, t_tok: torch.Tensor | None) -> torch.Tensor:
    """Logits (B, L, V+1) of every noisy block given the clean blocks before it: BD3-LM's training
    forward of ``x_t ⊕ x0`` (``block/attention.py``; σ(t_b) on the noisy half and 0 on the clean
    one for a time-conditioned network), a shifted head read as in training."""
    B, L = x0.shape
    bs, dev = process.cfg.block_size, x0.device
    shifted = process.shifted_head(model)
    sigma = None
    if t_tok is not None:
        sigma = torch.cat([process.schedule.sigma_for_conditioning(t_tok), torch.zeros_like(t_tok)], 1)
    net = Guided(model, known.repeat(1, 2), process.mask_id, cfg_scale) if cfg_scale else model
    out = net(torch.cat([xt, x0], dim=1), sigma, attn_mask=training_plan(L, bs, device=dev),
              positions=training_positions(L, dev),
              **({"shift_logits": False} if shifted else {}))                        # (B, 2L, V+1)
    reads = shifted_reads(L, bs, dev) if shifted else slice(0, L)
    return out[:, reads]
