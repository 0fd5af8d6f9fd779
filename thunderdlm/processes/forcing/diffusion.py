"""The Gaussian core of Diffusion Forcing: the official ``models/diffusion.py`` ``Diffusion`` class.

Per token, at its own real level k (−1 = clean, ᾱ_{−1} = 1; SPEC.md §5.1, §6):

    q_sample    x_k = √ᾱ_k x0 + √(1 − ᾱ_k) ε,       ε ~ clamp(N(0, I), ±clip_noise) in training
    pred_noise  ε̂ = clamp(out, ±clip_noise),        x̂0 = x_k/√ᾱ_k − √(1/ᾱ_k − 1) ε̂
    pred_x0     x̂0 = out,                           ε̂ = (x_k/√ᾱ_k − x̂0)/√(1/ᾱ_k − 1)
    pred_v      x̂0 = √ᾱ_k x_k − √(1 − ᾱ_k) out,     ε̂ as for pred_x0;   v = √ᾱ ε − √(1 − ᾱ) x0

One sample step (``sample_step``) moves every column of a window from level ``from`` to ``to``:

- columns with from = to keep their value bit for bit (context, finished and not-yet-started
  columns);
- clean columns (real level −1) are fed to the network at the stabilization level s − 1: with
  s = 0 as they are (level −1); else DDPM feeds q_sample(x, s − 1) with fresh noise and DDIM feeds
  √ᾱ_{s−1}·x with zero noise (the official quirk: scaled, not noised);
- DDPM (S = T − decode_level and every moving column steps down one real level, or to −1):
  x_{k−1} = μ̃(x̂0, x_k) + exp(½ log β̃_k)·clamp(z), no noise at k = 0;
- otherwise DDIM (η = ``ddim_eta``): x_{k'} = √ᾱ_{k'} x̂0 + √(1 − ᾱ_{k'} − σ²) ε̂ + σ·clamp(z),
  σ = η √((1 − ᾱ_k/ᾱ_{k'})(1 − ᾱ_{k'})/(1 − ᾱ_k)), σ = 0 when k' = −1.

A column reaching −1 gets x̂0 (DDPM at k = 0 and DDIM to −1 both give exactly that; with
``decode_level`` r > 0 the jump r → −1 reads x̂0 at level r).

The official DDPM path asserts that *every* column steps down by exactly one level, which a
pyramid's not-yet-started columns (S → S) violate; here they simply keep their value.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from thunderdlm import rng
from thunderdlm.processes.forcing.schedules import GaussianTables, loss_weights
from thunderdlm.processes.embedding.schedules import token_evidence


def _ch(t: torch.Tensor) -> torch.Tensor:
    """(B, L) → (B, L, 1) float32: a per-token coefficient broadcast over the D channels."""
    return t.float().unsqueeze(-1)


def decoder_logits(x0: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(..., D), (V, D) → (..., V): −½‖x0 − e_v‖² up to a per-position constant."""
    return x0.float() @ table.float().T - 0.5 * (table.float() ** 2).sum(-1)


@dataclass
class Prediction:
    eps: torch.Tensor          # (B, L, D) ε̂
    x0: torch.Tensor           # (B, L, D) x̂0
    out: torch.Tensor          # (B, L, D) what the MSE compares (the raw output; softmax: x̂0)
    logits: torch.Tensor | None = None   # (B, L, V) softmax head: the token logits behind x̂0

    def decoder_logits(self, table: torch.Tensor) -> torch.Tensor:
        """(B, L, V) logits of the token read out of this prediction: the softmax head's own, or
        −½‖x̂0 − e_v‖² (the nearest embedding is the argmax)."""
        return self.logits if self.logits is not None else decoder_logits(self.x0, table)


class ForcingDiffusion:
    """Tables plus the per-token Gaussian operations; holds no parameters."""

    def __init__(self, tables: GaussianTables, *, objective: str, clip_noise: float,
                 cum_snr_decay: float, fused_snr: bool, ddim_eta: float, stabilization_level: int,
                 sampling_timesteps: int, decode_level: int = 0, clip_x0: bool = False,
                 head: str = "regression"):
        self.tables, self.objective, self.clip_noise = tables, objective, clip_noise
        self.head = head
        self.cum_snr_decay, self.fused_snr, self.ddim_eta = cum_snr_decay, fused_snr, ddim_eta
        self.stabilization_level, self.decode_level = stabilization_level, decode_level
        self.clip_x0 = clip_x0
        self.T, self.S = tables.T, sampling_timesteps

    # ---- forward process and parameterisation --------------------------------------------------------
    def noise(self, shape, device, generator=None, clip: bool = True) -> torch.Tensor:
        z = rng.randn(shape, generator, device=device)       # per row with RowGenerators
        return z.clamp(-self.clip_noise, self.clip_noise) if clip else z

    def q_sample(self, x0: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ab = self.tables.alpha_bar(level)                                      # (B, L)
        return _ch(ab.sqrt()) * x0 + _ch((1.0 - ab).sqrt()) * noise

    def predictions(self, out: torch.Tensor, x: torch.Tensor, level: torch.Tensor,
                    table: torch.Tensor | None = None) -> Prediction:
        """(ε̂, x̂0) from the model output at levels (B, L); at level −1 x̂0 = x, ε̂ = 0.

        ``head="softmax"`` (needs ``table``, the (V, D) clean embeddings, and pred_x0): the output
        scores every token, ``logits_v = out·e_v + log N(x_k; √ᾱ_k e_v, (1 − ᾱ_k) I)`` (Plaid's
        output prior: the token's own noisy vector's evidence, exact as k → 0, which the network
        corrects from the context), and x̂0 = softmax(logits)·e, the posterior mean of e(w_i).

        With ``clip_x0``, x̂0 is scaled into the ball ‖x̂0‖ ≤ √D that holds every clean embedding
        (and so every posterior mean of one; DDPM's ``clip_denoised`` for this space) and ε̂ is
        re-derived from it, so the pair stays consistent.
        """
        ab = self.tables.alpha_bar(level)
        clean = _ch(level < 0)
        recip = _ch(ab.rsqrt())                                                 # 1/√ᾱ
        recipm1 = _ch((1.0 / ab - 1.0).sqrt())                                  # √(1/ᾱ − 1)
        safe = torch.where(clean > 0, torch.ones_like(recipm1), recipm1)
        logits = None
        if self.head == "softmax":
            tab = table.float()
            a = _ch(torch.where(level < 0, torch.zeros_like(ab), ab))        # clean: no prior needed
            logits = out.float() @ tab.T + token_evidence(x, a, tab)           # (B, L, V)
            x0 = torch.where(clean > 0, x, torch.softmax(logits, dim=-1) @ tab)
            eps = torch.where(clean > 0, torch.zeros_like(x0), (recip * x - x0) / safe)
            return Prediction(eps, x0, x0, logits)
        if self.objective == "pred_noise":
            eps = out.clamp(-self.clip_noise, self.clip_noise)
            x0 = recip * x - recipm1 * eps
        elif self.objective == "pred_x0":
            x0 = out
        elif self.objective == "pred_v":
            x0 = _ch(ab.sqrt()) * x - _ch((1.0 - ab).sqrt()) * out
        else:
            raise ValueError(f"unknown objective {self.objective!r}")
        if self.clip_x0:
            radius = x0.shape[-1] ** 0.5
            x0 = x0 * (radius / x0.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)
            x0 = torch.where(clean > 0, x, x0)
        if self.objective != "pred_noise" or self.clip_x0:
            eps = (recip * x - x0) / safe
        eps = torch.where(clean > 0, torch.zeros_like(eps), eps)
        return Prediction(eps, x0, out)

    def target(self, x0: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.objective == "pred_noise":
            return noise
        if self.objective == "pred_x0":
            return x0
        ab = self.tables.alpha_bar(level)
        return _ch(ab.sqrt()) * noise - _ch((1.0 - ab).sqrt()) * x0            # v

    def loss_weights(self, level: torch.Tensor) -> torch.Tensor:
        return loss_weights(level, self.tables, self.objective, self.cum_snr_decay, self.fused_snr)

    # ---- one reverse step ---------------------------------------------------------------------------
    def network_input(self, x: torch.Tensor, level: torch.Tensor, ddpm: bool,
                      generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stabilization: clean columns (level −1) are fed at level s − 1. Returns (input, level)."""
        clean = level < 0
        s = self.stabilization_level
        if s == 0 or not bool(clean.any()):
            return x, level
        fed = torch.where(clean, torch.full_like(level, s - 1), level)
        if ddpm:
            noised = self.q_sample(x, fed, self.noise(x.shape, x.device, generator))
        else:
            noised = self.q_sample(x, fed, torch.zeros_like(x))               # √ᾱ_{s−1}·x
        return torch.where(_ch(clean) > 0, noised, x), fed

    def sample_step(self, net, x: torch.Tensor, real_from: torch.Tensor, real_to: torch.Tensor,
                    generator=None, return_prediction: bool = False):
        """One step of a window x (B, W, D) from real levels ``real_from`` to ``real_to`` (B, W).

        Returns (x_next, x̂0), both (B, W, D) — or (x_next, the whole ``Prediction``) with
        ``return_prediction``; columns with from = to are returned unchanged, and columns reaching
        −1 (clean) get x̂0 (what both DDPM at level 0 and DDIM to −1 give).
        """
        moving = real_to < real_from
        if bool((real_to > real_from).any()):
            raise ValueError("a sample step may not add noise: some level increases")
        noisy_next = moving & (real_to >= 0)
        ddpm = (self.S == self.T - self.decode_level
                and bool((real_from[noisy_next] - 1 == real_to[noisy_next]).all()))
        inp, fed = self.network_input(x, real_from, ddpm, generator)
        table = net.token_table() if self.head == "softmax" else None
        pred = self.predictions(net(inp, fed), inp, fed, table)
        z = self.noise(x.shape, x.device, generator)
        if ddpm:
            k = real_from.clamp(min=0)
            t = self.tables
            mean = (_ch(t.gather("posterior_mean_coef1", k, 0.0)) * pred.x0
                    + _ch(t.gather("posterior_mean_coef2", k, 0.0)) * x)
            log_var = _ch(t.gather("posterior_log_variance_clipped", k, 0.0))
            z = torch.where(_ch(real_from > 0) > 0, z, torch.zeros_like(z))
            x_new = mean + torch.exp(0.5 * log_var) * z
        else:
            a = self.tables.alpha_bar(real_from)
            a_next = self.tables.alpha_bar(real_to)
            ratio = (1 - a / a_next) * (1 - a_next) / (1 - a).clamp(min=1e-20)   # clean: 0/0 avoided
            sigma = self.ddim_eta * ratio.clamp(min=0).sqrt()
            sigma = torch.where(real_to < 0, torch.zeros_like(sigma), sigma)
            c = (1 - a_next - sigma ** 2).clamp(min=0).sqrt()
            x_new = _ch(a_next.sqrt()) * pred.x0 + _ch(c) * pred.eps + _ch(sigma) * z
        x_new = torch.where(_ch(moving & (real_to < 0)) > 0, pred.x0, x_new)
        x_new = torch.where(_ch(moving) > 0, x_new, x)
        return (x_new, pred) if return_prediction else (x_new, pred.x0)
