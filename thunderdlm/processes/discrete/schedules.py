"""Noise schedules for discrete (masked / uniform) diffusion, parameterised by the keep rate α_t.

Notation (SPEC.md §1.1, §4.1): t ∈ [0, 1] is continuous time; α_t is the probability that a token
is still clean at time t (α_0 = 1); the mask / move probability is m(t) = 1 − α_t; the "total
noise" is σ(t) = −log α_t (MDLM/SEDD), so α_t = e^{−σ(t)} and σ'(t) = −α'_t / α_t.

The continuous-time NELBO weight of a masked token is −α'_t / (1 − α_t) = σ'(t) / (e^{σ(t)} − 1).

ε: MDLM uses α_1 = ε = 1e-3 so that σ(1) stays finite. With ε > 0 not every token is masked at
t = 1, so the all-mask prior does not match q(x_1 | x0) and the NELBO is not exactly a bound.
thunderdlm defaults to ε = 0 (α_1 = 0, every token masked at t = 1, the bound is exact) and clamps
σ only where it is fed to the network as a conditioning signal (``sigma_for_conditioning``).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

SIGMA_COND_MAX = -math.log(1e-3)  # ≈ 6.91, MDLM's σ(1): the largest σ the network ever sees


class Schedule(ABC):
    """α_t and its derivative; everything else (σ, m, the NELBO weight) derives from them."""

    name: str

    def __init__(self, eps: float = 0.0):
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"schedule eps must be in [0, 1), got {eps}")
        self.eps = eps

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Keep probability α_t, decreasing from 1 at t = 0 to ε at t = 1."""

    @abstractmethod
    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        """dα_t/dt (≤ 0)."""

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """m(t) = 1 − α_t."""
        return 1.0 - self.alpha(t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ(t) = −log α_t (infinite at t = 1 when ε = 0)."""
        return -torch.log(self.alpha(t))

    def dsigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ'(t) = −α'_t / α_t."""
        return -self.dalpha(t) / self.alpha(t)

    def sigma_for_conditioning(self, t: torch.Tensor) -> torch.Tensor:
        """σ(t) clamped to [0, SIGMA_COND_MAX]: a finite conditioning input for the network."""
        return self.sigma(t).clamp(0.0, SIGMA_COND_MAX)

    def nelbo_weight(self, t: torch.Tensor) -> torch.Tensor:
        """−α'_t / (1 − α_t): the continuous-time weight of each masked token's −log p(x0)."""
        return -self.dalpha(t) / (1.0 - self.alpha(t))


class LogLinear(Schedule):
    """α_t = 1 − (1 − ε) t: the mask rate grows linearly; the NELBO weight is exactly 1/t."""

    name = "loglinear"

    def alpha(self, t):
        return 1.0 - (1.0 - self.eps) * t

    def dalpha(self, t):
        return torch.full_like(t, -(1.0 - self.eps))

    def nelbo_weight(self, t):
        # −α'/(1−α) = (1−ε)/((1−ε)t) = 1/t exactly, for every ε (SPEC §1.5)
        return 1.0 / t


class Cosine(Schedule):
    """α_t = ε + (1 − ε) cos(πt/2) (MDLM's cosine: σ = −log(ε + (1−ε)cos(πt/2)))."""

    name = "cosine"

    def alpha(self, t):
        return self.eps + (1.0 - self.eps) * torch.cos(0.5 * math.pi * t)

    def dalpha(self, t):
        return -(1.0 - self.eps) * 0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class D3PMCosine(Schedule):
    """D3PM's cosine for uniform noise, as google-research ``d3pm`` codes it (SPEC.md §9): with
    u(t) = π/2·(t + s)/(1 + s), s = 0.008, ᾱ(t) = cos u(t) — **not squared** — and the keep
    probability α_t = ε + (1 − ε) ᾱ(t)/ᾱ(0) (D3PM's β_k = 1 − ᾱ(k)/ᾱ(k−1) multiply to ᾱ(k)/ᾱ(0)).
    At t = 1/2: α ≈ 0.703 (the squared schedule: 0.494). D3PM clips β_k at 0.999, which only
    touches its last step (ᾱ(1) = 0); with ε = 0 we keep α_1 = 0 so the uniform prior is exact.

    cos u(t) is computed as sin v(t), v(t) = π/2·(1 − t)/(1 + s), so that α_1 is exactly ε."""

    name = "d3pm_cosine"
    OFFSET = 0.008
    POWER = 1

    def _angle(self, t):
        return 0.5 * math.pi * (1.0 - t) / (1.0 + self.OFFSET)              # v(t) = π/2 − u(t)

    def alpha(self, t):
        f0 = math.sin(0.5 * math.pi / (1.0 + self.OFFSET)) ** self.POWER
        return self.eps + (1.0 - self.eps) * torch.sin(self._angle(t)) ** self.POWER / f0

    def dalpha(self, t):
        f0 = math.sin(0.5 * math.pi / (1.0 + self.OFFSET)) ** self.POWER
        v = self._angle(t)
        # d/dt sinⁿ(v) = n sinⁿ⁻¹(v) cos(v)·dv/dt, dv/dt = −π/(2(1+s))
        dv = -0.5 * math.pi / (1.0 + self.OFFSET)
        return (1.0 - self.eps) * self.POWER * torch.sin(v) ** (self.POWER - 1) * torch.cos(v) * dv / f0


class CosineSquared(D3PMCosine):
    """Nichol & Dhariwal's (improved DDPM) cosine: f(t) = cos²(π/2·(t+s)/(1+s)), s = 0.008,
    α_t = ε + (1 − ε) f(t)/f(0) — the square of ``d3pm_cosine``'s shape: at t = 1/2, α ≈ 0.494.
    (Before issue 19 this schedule was registered, wrongly, as ``d3pm_cosine``.)"""

    name = "cosine_squared"
    POWER = 2


SCHEDULES: dict[str, type[Schedule]] = {"loglinear": LogLinear, "cosine": Cosine, "d3pm_cosine": D3PMCosine,
                                         "cosine_squared": CosineSquared}


class Geometric(Schedule):
    """SEDD's geometric noise σ(t) = σ_min^{1−t} σ_max^t, σ'(t) = σ(t)·log(σ_max/σ_min) (SPEC §3.1).

    Parameterised by σ, not α: α_0 = e^{−σ_min} < 1 (the data is already slightly noised at t = 0)
    and α_1 = e^{−σ_max} > 0. It is therefore not in ``SCHEDULES`` (whose members go from α = 1 to ε);
    the score-entropy process builds it by name and accounts for both ends in its bound.
    """

    name = "geometric"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        super().__init__(0.0)
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"geometric noise needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.log_ratio = math.log(sigma_max / sigma_min)

    def sigma(self, t):
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def dsigma(self, t):
        return self.sigma(t) * self.log_ratio

    def alpha(self, t):
        return torch.exp(-self.sigma(t))

    def dalpha(self, t):
        return -self.dsigma(t) * self.alpha(t)

    def sigma_for_conditioning(self, t):
        return self.sigma(t)                      # finite everywhere (≤ σ_max): fed as SEDD does

    def nelbo_weight(self, t):
        return self.dsigma(t) / torch.expm1(self.sigma(t))   # = −α'/(1−α), accurate at small σ


def build_schedule(name: str, eps: float = 0.0) -> Schedule:
    return SCHEDULES[name](eps)
