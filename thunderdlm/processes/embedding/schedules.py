"""Noise schedules for Gaussian (continuous-latent) diffusion, in continuous time t ∈ [0, 1].

Notation (SPEC.md §5.1; VDM, Kingma et al. 2021):

    z_t = √ᾱ(t) · x + √(1 − ᾱ(t)) · ε,      ε ~ N(0, I)
    SNR(t) = ᾱ / (1 − ᾱ),                   SNR'(t) = ᾱ' / (1 − ᾱ)²   (< 0: noise grows with t)

Each schedule has a raw shape g(t) (1 at t = 0, falling to about 0 at t = 1), which is normalised to
exactly [0, 1] and mapped into [ᾱ_min, ᾱ_max]:

    ĝ(t) = (g(t) − g(1)) / (g(0) − g(1)),          ᾱ(t) = ᾱ_min + (ᾱ_max − ᾱ_min) · ĝ(t)

so every schedule starts at σ_0² = 1 − ᾱ_max (a small but non-zero noise, which keeps the decoder
term p(w | z_0) of the bound finite) and ends at ᾱ_min (a near-standard-normal prior whose KL is
counted in the bound). ᾱ is strictly decreasing, and the mapping keeps it smooth, unlike clipping.

Shapes g:
- ``cosine`` (Nichol & Dhariwal): g = cos²(π/2 · (t + s)/(1 + s)) / cos²(π/2 · s/(1 + s)), s = 0.008;
- ``linear`` (DDPM's β from 1e-4 to 0.02 over 1000 steps, as the VP-SDE): g = exp(−β₀t − ½(β₁ − β₀)t²),
  β₀ = 0.1, β₁ = 20;
- ``sqrt`` (Diffusion-LM): g = 1 − √(t + 1e-4): most of the noise arrives early, which Diffusion-LM
  found suits word embeddings (a small amount of Gaussian noise barely changes the nearest token).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

ALPHA_BAR_MAX = 1.0 - 1e-4      # ᾱ(0): σ_0 = 0.01, far below the spacing of unit-variance latents
ALPHA_BAR_MIN = 1e-4            # ᾱ(1): the prior KL is ≈ ½·ᾱ_min·‖x‖² ≈ 1e-3 nats per token at d = 16


class GaussianSchedule(ABC):
    """ᾱ(t), its derivative and the SNR; ``t`` may be a float tensor of any shape."""

    name: str

    def __init__(self, alpha_bar_min: float = ALPHA_BAR_MIN, alpha_bar_max: float = ALPHA_BAR_MAX):
        if not 0.0 < alpha_bar_min < alpha_bar_max < 1.0:
            raise ValueError(f"need 0 < alpha_bar_min < alpha_bar_max < 1, got "
                             f"{alpha_bar_min}, {alpha_bar_max}")
        self.lo, self.hi = alpha_bar_min, alpha_bar_max
        one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        self.g0, self.g1 = float(self.g(zero)), float(self.g(one))

    @abstractmethod
    def g(self, t: torch.Tensor) -> torch.Tensor:
        """The raw shape, decreasing in t."""

    @abstractmethod
    def dg(self, t: torch.Tensor) -> torch.Tensor:
        """dg/dt."""

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        g_hat = (self.g(t) - self.g1) / (self.g0 - self.g1)
        return self.lo + (self.hi - self.lo) * g_hat

    def dalpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return (self.hi - self.lo) * self.dg(t) / (self.g0 - self.g1)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar(t)
        return a / (1.0 - a)

    def dsnr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR'(t) = ᾱ'/(1 − ᾱ)² (negative)."""
        return self.dalpha_bar(t) / (1.0 - self.alpha_bar(t)) ** 2


class CosineSchedule(GaussianSchedule):
    name = "cosine"
    S = 0.008

    def _u(self, t):
        return 0.5 * math.pi * (t + self.S) / (1.0 + self.S)

    def g(self, t):
        return torch.cos(self._u(t)) ** 2

    def dg(self, t):
        # d/dt cos²(u) = −sin(2u) · du/dt
        return -torch.sin(2.0 * self._u(t)) * 0.5 * math.pi / (1.0 + self.S)


class LinearSchedule(GaussianSchedule):
    name = "linear"
    B0, B1 = 0.1, 20.0

    def g(self, t):
        return torch.exp(-(self.B0 * t + 0.5 * (self.B1 - self.B0) * t * t))

    def dg(self, t):
        return -(self.B0 + (self.B1 - self.B0) * t) * self.g(t)


class SqrtSchedule(GaussianSchedule):
    name = "sqrt"
    OFFSET = 1e-4

    def g(self, t):
        return 1.0 - torch.sqrt(t + self.OFFSET)

    def dg(self, t):
        return -0.5 / torch.sqrt(t + self.OFFSET)


GAUSSIAN_SCHEDULES: dict[str, type[GaussianSchedule]] = {
    "cosine": CosineSchedule, "linear": LinearSchedule, "sqrt": SqrtSchedule}


def build_gaussian_schedule(name: str) -> GaussianSchedule:
    return GAUSSIAN_SCHEDULES[name]()


def token_evidence(z: torch.Tensor, a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """log N(z; √ᾱ e_v, (1 − ᾱ) I) up to a constant in v: (..., V) logits of each position's token
    given its own noisy vector alone, under a uniform prior (Plaid's output prior). z (..., d),
    a = ᾱ broadcastable to (..., 1) with ᾱ < 1, e (V, d) the clean vocabulary vectors."""
    e = e.float()
    return (a.sqrt() * (z.float() @ e.T) - 0.5 * a * e.square().sum(-1)) / (1.0 - a)
