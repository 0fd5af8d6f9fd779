"""Diffusion Forcing sampling: scheduling matrices over a sliding window (``validation_step``).

A *window* holds the continuous state x (B, W, D) of positions [start, hi): clean context
[start, lo) and a horizon [lo, hi) whose generated columns are denoised together, column t
following M[·, rank(t)] of a scheduling matrix (rank = index among the generated columns of that
row, so known tokens inside the horizon are context at level 0 and take no slot). A row transition
m → m' is one network evaluation (``ForcingDiffusion.sample_step``) from levels M[m] to M[m'];
columns whose level does not change keep their value bit for bit.

Decoding (embedding → token): logits_v = −½‖x̂0 − e_v‖² + const = x̂0·e_v − ½‖e_v‖², so the
nearest token embedding is the argmax. When a column reaches level 0 its token is drawn from these
logits (temperature / top-k / top-p of the sampling options; temperature 0 = nearest), and with
``round_clean`` its value becomes e(token) (Diffusion-LM's clamping: later columns read clean
token embeddings, as in training; this is also the generative model ``nelbo`` bounds). Without it
the continuous x̂0 stays, as in the official code.

Two drivers:
- ``generate_df``: the official loop for prompted continuation of any length: chunks of
  ``chunk_size`` tokens (0: as many as fit the window), every row of each chunk's matrix, and a
  sliding window of ``window`` positions (0: the network's context) over the context, fed with
  positions 0..W−1 as in the official code.
- the process's ``step`` inside the generic loop: one window per loop block (the block is the
  horizon); the block's ``spb`` loop steps cover the matrix's R = height − 1 transitions, step j
  jumping from row round(jR/spb) to round((j+1)R/spb). With spb ≥ R that is every row once (the
  official sampler; empty steps cost nothing); with spb < R rows are skipped and the jumps use the
  DDIM step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from thunderdlm.errors import SamplingError
from thunderdlm.processes.base import SampleOptions
from thunderdlm.processes.forcing.diffusion import ForcingDiffusion, decoder_logits  # noqa: F401 (API)
from thunderdlm.processes.forcing.schedules import real_levels, scheduling_matrix
from thunderdlm.categorical import draw_tokens


def nearest_tokens(x0: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(..., D) → (...) long: the token whose clean embedding is closest in L2."""
    d = torch.cdist(x0.float().reshape(-1, x0.shape[-1]), table.float())       # (N, V)
    return d.argmin(-1).reshape(x0.shape[:-1])


@dataclass
class Window:
    x: torch.Tensor            # (B, W, D) state of positions [start, hi)
    start: int
    lo: int
    hi: int
    gen: torch.Tensor          # (B, H) bool: generated columns of [lo, hi)
    rank: torch.Tensor         # (B, H) long: index of a generated column among its row's
    matrix: torch.Tensor       # (height, H_gen) long sampling levels
    row: int                   # current row of the matrix
    tokens: torch.Tensor       # (B, H) long: known tokens / decoded tokens / current nearest guess

    @property
    def height(self) -> int:
        return self.matrix.shape[0]

    def levels(self, row: int) -> torch.Tensor:
        """(B, W) sampling levels after ``row``: 0 (clean) for context and known columns."""
        horizon = self.matrix[row].to(self.gen.device)[self.rank]               # (B, H)
        horizon = torch.where(self.gen, horizon, torch.zeros_like(horizon))
        ctx = torch.zeros(self.gen.shape[0], self.lo - self.start, dtype=torch.long,
                          device=self.gen.device)
        return torch.cat([ctx, horizon], dim=1)


class ForcingSampler:
    def __init__(self, diffusion: ForcingDiffusion, matrix: str, uncertainty_scale: float,
                 window: int, round_clean: bool):
        self.diffusion, self.matrix_kind, self.u = diffusion, matrix, uncertainty_scale
        self.window, self.round_clean = window, round_clean
        self.real = real_levels(diffusion.S, diffusion.T, decode_level=diffusion.decode_level)

    def n_tokens(self, net) -> int:
        """The sliding window's width: ``window`` or the network's context."""
        return min(self.window, net.max_seq_len) if self.window > 0 else net.max_seq_len

    # ---- one window ---------------------------------------------------------------------------------
    def open(self, net, tokens: torch.Tensor, gen: torch.Tensor, x_prefix: torch.Tensor | None,
             lo: int, hi: int, generator=None) -> Window:
        """A window ending at ``hi`` whose columns [lo, hi) with ``gen`` (B, hi − lo) start from
        noise. Context comes from ``x_prefix`` (B, lo, D) if given, else from e(tokens[:, :lo])."""
        n = self.n_tokens(net)
        if hi - lo > n:
            raise SamplingError(f"a horizon of {hi - lo} tokens does not fit the sliding window of "
                                f"{n}; use a --block-length (or chunk size) of at most {n}")
        start = max(0, hi - n)
        B = tokens.shape[0]
        if x_prefix is not None:
            ctx = x_prefix[:, start:lo]
        else:
            ctx = net.embed(tokens[:, start:lo])
        known = net.embed(tokens[:, lo:hi])                                    # (B, H, D)
        noise = self.diffusion.noise(known.shape, known.device, generator)
        horizon = torch.where(gen.unsqueeze(-1), noise, known)
        rank = (gen.long().cumsum(dim=1) - 1).clamp(min=0)                      # (B, H)
        n_gen = max(int(gen.sum(dim=1).max()), 1)
        M = scheduling_matrix(self.matrix_kind, n_gen, self.diffusion.S, self.u)
        return Window(torch.cat([ctx.float(), horizon], dim=1), start, lo, hi, gen.clone(), rank,
                      M, 0, tokens[:, lo:hi].clone())

    @torch.no_grad()
    def advance(self, net, w: Window, row: int, generator=None,
                options: SampleOptions | None = None) -> int:
        """Move the window from row ``w.row`` to ``row`` in one network evaluation; returns the
        number of evaluations made (0 when no column changes level)."""
        options = options or SampleOptions()
        src, dst = w.levels(w.row), w.levels(row)
        w.row = row
        if not bool((dst < src).any()):
            return 0
        real = self.real.to(src.device)
        real_from, real_to = real[src], real[dst]                             # (B, W)
        x_new, pred = self.diffusion.sample_step(net, w.x, real_from, real_to, generator,
                                                 return_prediction=True)
        x0_hat = pred.x0
        table = net.token_table()                                             # (V, D)
        off = w.lo - w.start
        done = ((real_to < 0) & (real_from >= 0))[:, off:] & w.gen            # (B, H) now clean
        if bool(done.any()):
            # a column reaching clean holds x̂0 (x_new = pred.x0 there): read its token out
            logits = pred.decoder_logits(table)[:, off:]                      # (B, H, V)
            drawn = draw_tokens(logits, options.temperature, options.top_k, options.top_p,
                                generator)
            w.tokens = torch.where(done, drawn, w.tokens)
            if self.round_clean:
                snapped = table[w.tokens]                                     # (B, H, D)
                x_new = x_new.clone()
                x_new[:, off:] = torch.where(done.unsqueeze(-1), snapped, x_new[:, off:])
        still = (real_to >= 0)[:, off:] & w.gen                              # (B, H) still noisy
        if bool(still.any()):
            w.tokens = torch.where(still, nearest_tokens(x0_hat[:, off:], table), w.tokens)
        w.x = x_new
        return 1

    # ---- the official loop -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, net, prompt: torch.Tensor, n_new: int, *, chunk_size: int = 0,
                 generator=None, options: SampleOptions | None = None,
                 ) -> tuple[torch.Tensor, int]:
        """``validation_step``: continue ``prompt`` (B, P) by ``n_new`` tokens. Returns
        (tokens (B, P + n_new), network evaluations)."""
        if n_new < 0 or chunk_size < 0:
            raise SamplingError(f"need n_new >= 0 and chunk_size >= 0, got {n_new}, {chunk_size}")
        n = self.n_tokens(net)
        B, P = prompt.shape
        x_all = net.embed(prompt)                                             # (B, P, D)
        tokens = prompt.clone()
        curr, total, nfe = P, P + n_new, 0
        while curr < total:
            horizon = min(total - curr, chunk_size if chunk_size > 0 else n, n)
            gen = torch.ones(B, horizon, dtype=torch.bool, device=prompt.device)
            pad = torch.zeros(B, horizon, dtype=torch.long, device=prompt.device)
            w = self.open(net, torch.cat([tokens, pad], 1), gen, x_all, curr, curr + horizon,
                          generator)
            for m in range(1, w.height):
                nfe += self.advance(net, w, m, generator, options)
            x_all = torch.cat([x_all[:, :w.start], w.x], dim=1)
            tokens = torch.cat([tokens, w.tokens], dim=1)
            curr += horizon
        return tokens, nfe


def budget_row(t_next: float, transitions: int) -> int:
    """The matrix row the loop's step should reach at time ``t_next`` (row R at t = 0)."""
    if t_next <= 0:
        return transitions
    return min(transitions, int(math.floor((1.0 - t_next) * transitions + 0.5)))
