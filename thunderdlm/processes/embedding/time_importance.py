"""Importance sampling of the diffusion time t from the loss's own history.

The bound's diffusion term is an integral over t ∈ (0, 1] estimated from one t per sequence:

    D = ∫₀¹ h(t) dt,        h(t) = −½ SNR'(t) E‖x − x̂0(z_t)‖²

With t drawn from a density p instead of uniformly, h(t)/p(t) is still unbiased, and its variance is
smallest for p ∝ √E[h(t)²]. This is Improved DDPM's ``LossSecondMomentResampler`` (Nichol &
Dhariwal 2021, §3.3: "sample t ∝ √E[L_t²]", each step's history of 10 losses, 0.001 of the mass kept
uniform), and it plays the role of Plaid's learned schedule γ(t), which is trained to minimise
E[loss²] (the variance) of the same bound, and of CDCD's time warping, which moves training effort
to where the loss is still changing. Here t is continuous, so the history is per bin:

    bins        K equal intervals of (0, 1]; m2[k] an exponential moving average of h(t)² over the
                draws that fell in bin k, n[k] how many there were
    density     p(t) = K · q[k(t)],  q = (1 − u)·√m2 / Σ√m2 + u/K           (u = ``UNIFORM_SHARE``)
    draws       low-discrepancy u_j = (j + U)/n mapped through the inverse CDF of p (piecewise linear,
                so the draws stay stratified); weight 1/p(t) makes every estimate unbiased
    warm-up     until every bin has ``WARMUP`` draws, p is uniform (weight 1)

The statistics are buffers of the network (saved in checkpoints, so a resumed run draws exactly as
the uninterrupted one would; under DDP they are broadcast from rank 0 with the other buffers).
"""
from __future__ import annotations

import torch
from torch import nn

UNIFORM_SHARE = 1e-3   # Improved DDPM's uniform_prob: no bin's density ever reaches zero
WARMUP = 10            # Improved DDPM's history_per_term: draws per bin before the proposal is used
DECAY = 0.9            # the per-bin moving average of h²: about the last 10 draws, as Improved DDPM's history


class TimeImportance(nn.Module):
    """Per-bin second moments of the integrand and the proposal density they define."""

    def __init__(self, bins: int):
        super().__init__()
        self.bins = bins
        self.register_buffer("m2", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(bins, dtype=torch.float64))

    @property
    def ready(self) -> bool:
        return bool((self.count >= WARMUP).all())

    def bin_probs(self) -> torch.Tensor:
        """q: (K,) the probability of each bin (uniform until warm)."""
        K = self.bins
        if not self.ready:
            return torch.full((K,), 1.0 / K, dtype=torch.float64, device=self.m2.device)
        root = self.m2.clamp(min=0).sqrt()
        if not float(root.sum()) > 0:
            return torch.full((K,), 1.0 / K, dtype=torch.float64, device=self.m2.device)
        return (1.0 - UNIFORM_SHARE) * root / root.sum() + UNIFORM_SHARE / K

    def sample(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weight) from u ∈ (0, 1] (n,): t = F⁻¹(u) in (0, 1], weight = 1/p(t); float64."""
        K = self.bins
        q = self.bin_probs()
        cdf = torch.cat([q.new_zeros(1), q.cumsum(0)])                        # (K + 1,)
        cdf[-1] = 1.0
        u = u.double().clamp(1e-12, 1.0)
        k = (torch.searchsorted(cdf, u, right=False) - 1).clamp(0, K - 1)     # u ∈ (cdf[k], cdf[k+1]]
        frac = ((u - cdf[k]) / q[k]).clamp(0.0, 1.0)
        t = ((k.double() + frac) / K).clamp(min=1e-12)
        return t, 1.0 / (K * q[k])

    @torch.no_grad()
    def update(self, t: torch.Tensor, h: torch.Tensor) -> None:
        """Record integrand values h (n,) seen at times t (n,)."""
        k = (t.double() * self.bins).ceil().long().clamp(1, self.bins) - 1
        h2 = h.detach().double().square()
        for kk, v in zip(k.tolist(), h2.tolist()):                            # n is a batch: tiny
            first = self.count[kk] == 0
            self.m2[kk] = v if first else DECAY * self.m2[kk] + (1 - DECAY) * v
            self.count[kk] += 1
