"""Diffusion Forcing's schedules: β schedules, the Gaussian tables, loss weights, scheduling matrices.

Notation (SPEC.md §5.1, §6; Chen et al. 2024, official code ``buoyancy99/diffusion-forcing``):

    T           ``timesteps``: training noise levels k = 0..T−1 (k = 0 is the first noising step)
    β_k         beta schedule (linear / cosine / sigmoid), built in float64 as ``models/utils.py``
    ᾱ_k         Π_{j≤k} (1 − β_j);  ᾱ_{−1} = 1 (level −1 = clean)
    snr_k       ᾱ_k / (1 − ᾱ_k),   clipped_snr_k = min(snr_k, C),  C = ``snr_clip``
    S           ``sampling_timesteps``: sampling levels 0..S (S = pure noise, 0 = clean)
    real(j)     long(linspace(−1, T−1, S+1))[j]: sampling level j → real level (−1 = clean)
    M[m, t]     scheduling matrix: the sampling level of column (token) t after row (step) m

The tables are float64; callers gather them at integer levels and cast once to float32, which gives
exactly the official float32 buffer values (the official code casts float64 → float32 at
registration).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BETA_SCHEDULES = ("linear", "cosine", "sigmoid")
MATRICES = ("pyramid", "full_sequence", "autoregressive", "trapezoid")
OBJECTIVES = ("pred_noise", "pred_x0", "pred_v")


# ---- β schedules (float64) ---------------------------------------------------------------------------

def linear_betas(T: int) -> torch.Tensor:
    """β = linspace(1e-4·1000/T, 0.02·1000/T, T) (DDPM's, rescaled to T steps); needs T > 20."""
    scale = 1000.0 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)


def _betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """ᾱ(τ_j) on j = 0..T (normalised by ᾱ(0)) → β_j = clip(1 − ᾱ(τ_{j+1})/ᾱ(τ_j), 0, 0.999)."""
    alpha_bar = alpha_bar / alpha_bar[0]
    return torch.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)


def cosine_betas(T: int, s: float = 0.008) -> torch.Tensor:
    """ᾱ(τ) = cos²((τ + s)/(1 + s)·π/2), τ = j/T (Nichol & Dhariwal)."""
    tau = torch.linspace(0, T, T + 1, dtype=torch.float64) / T
    return _betas_from_alpha_bar(torch.cos((tau + s) / (1 + s) * math.pi * 0.5) ** 2)


def sigmoid_betas(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """ᾱ(τ) = (v(end) − v(τ)) / (v(end) − v(start)), v(τ) = sigmoid((τ(end − start) + start)/tau).

    v(start), v(end) are float32 scalars as in the official code (``torch.tensor(start / tau)``).
    """
    grid = torch.linspace(0, T, T + 1, dtype=torch.float64) / T
    v_start = torch.tensor(start / tau).sigmoid().double()
    v_end = torch.tensor(end / tau).sigmoid().double()
    alpha_bar = (-((grid * (end - start) + start) / tau).sigmoid() + v_end) / (v_end - v_start)
    return _betas_from_alpha_bar(alpha_bar)


def beta_schedule(name: str, T: int) -> torch.Tensor:
    if name == "linear":
        return linear_betas(T)
    if name == "cosine":
        return cosine_betas(T)
    if name == "sigmoid":
        return sigmoid_betas(T)
    raise ValueError(f"unknown beta schedule {name!r}; choose one of {list(BETA_SCHEDULES)}")


def shift_betas(betas: torch.Tensor, shift: float) -> torch.Tensor:
    """The schedule with every level's SNR multiplied by ``shift`` (Hoogeboom et al. 2023, "simple
    diffusion": logit ᾱ'_k = logit ᾱ_k + log shift, so SNR'_k = shift · SNR_k), back as betas
    β'_k = 1 − ᾱ'_k / ᾱ'_{k−1} (ᾱ'_{−1} = 1). Monotone, so every β' is in (0, 1); shift 1 returns
    the betas unchanged."""
    if shift == 1.0:
        return betas
    ab = torch.cumprod(1.0 - betas.double(), dim=0)
    ab = torch.sigmoid(torch.logit(ab) + math.log(shift))
    prev = F.pad(ab[:-1], (1, 0), value=1.0)
    return (1.0 - ab / prev).to(betas.dtype)


# ---- Gaussian tables -----------------------------------------------------------------------------------

class GaussianTables:
    """The DDPM quantities of one β schedule (float64, on CPU; ``to(device)`` caches a copy).

    ``alpha_bar(k)`` and friends take integer levels of any shape, with −1 meaning clean (ᾱ = 1).
    The official code would index −1 as the *last* level (Python wrap-around) or fail in
    ``extract``'s gather; we use the SPEC §5.1 convention ᾱ_{−1} = 1 instead.
    """

    def __init__(self, betas: torch.Tensor, snr_clip: float):
        b = betas.double().cpu()
        self.T = b.numel()
        self.snr_clip = float(snr_clip)
        self.betas = b
        self.alphas_cumprod = torch.cumprod(1.0 - b, dim=0)                          # ᾱ_k
        self.alphas_cumprod_prev = F.pad(self.alphas_cumprod[:-1], (1, 0), value=1.0)  # ᾱ_{k−1}
        ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.snr = ab / (1.0 - ab)
        self.clipped_snr = self.snr.clamp(max=self.snr_clip)
        self.posterior_variance = b * (1.0 - ab_prev) / (1.0 - ab)                  # β̃_k
        self.posterior_log_variance_clipped = torch.log(self.posterior_variance.clamp(min=1e-20))
        self.posterior_mean_coef1 = b * ab_prev.sqrt() / (1.0 - ab)                 # · x0
        self.posterior_mean_coef2 = (1.0 - ab_prev) * (1.0 - b).sqrt() / (1.0 - ab)  # · x_k
        self._on: dict[tuple[str, torch.device], torch.Tensor] = {}

    def table(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, torch.device(device))
        if key not in self._on:
            self._on[key] = getattr(self, name).to(device)
        return self._on[key]

    def gather(self, name: str, level: torch.Tensor, clean_value: float) -> torch.Tensor:
        """``name``[level] in float64 (float32 on devices without float64); level −1 → clean_value."""
        tab = self.table(name, level.device)
        if level.device.type == "mps":
            tab = tab.float()
        out = tab[level.clamp(min=0)]
        return torch.where(level < 0, torch.full_like(out, clean_value), out)

    def alpha_bar(self, level: torch.Tensor) -> torch.Tensor:
        return self.gather("alphas_cumprod", level, 1.0)


# ---- loss weights (``Diffusion.compute_loss_weights``) ---------------------------------------------

def loss_weights(levels: torch.Tensor, tables: GaussianTables, objective: str,
                 cum_snr_decay: float, fused: bool = True) -> torch.Tensor:
    """Per-token weights (B, L) for levels (B, L) in 0..T−1; the frame axis is the sequence axis.

    min-SNR (``fused=False``): pred_noise cs/snr, pred_x0 cs, pred_v cs/(snr + 1).
    Fused SNR, with n = cs/C, m = snr/C, d = cum_snr_decay:
        cum_0 = n_0,  cum_f = d·cum_{f−1} + (1 − d)·n_f;   cum'_f = cum_{f−1} (cum'_0 = 0)
        cf = 1 − (1 − d·cum')(1 − n),   fu = 1 − (1 − d·cum')(1 − m)
        pred_noise cf/fu,   pred_x0 C·cf,   pred_v C·cf/(C·fu + 1)
    The recursion is evaluated in closed form, cum_f = d^f n_0 + (1 − d) Σ_{1≤j≤f} d^{f−j} n_j,
    as one (L, L) matrix product (float64).
    """
    C = tables.snr_clip
    snr = tables.gather("snr", levels, math.inf)
    cs = tables.gather("clipped_snr", levels, C)
    if not fused:
        if objective == "pred_noise":
            return cs / snr
        if objective == "pred_x0":
            return cs
        if objective == "pred_v":
            return cs / (snr + 1.0)
        raise ValueError(f"unknown objective {objective!r}")
    n, m = cs / C, snr / C                                                   # (B, L)
    L = levels.shape[1]
    f = torch.arange(L, device=levels.device, dtype=n.dtype)
    lag = f[:, None] - f[None, :]                                            # (L, L): f − j
    d = torch.tensor(float(cum_snr_decay), dtype=n.dtype, device=n.device)
    coef = torch.where(lag >= 0, d ** lag.clamp(min=0), torch.zeros_like(lag)) * (1.0 - d)
    coef[:, 0] = d ** f                                                       # the n_0 term
    cum = n @ coef.T                                                          # (B, L)
    cum_prev = F.pad(cum[:, :-1], (1, 0), value=0.0)                          # shift by one token
    keep = 1.0 - cum_prev * d
    clipped_fused = 1.0 - keep * (1.0 - n)
    fused_snr = 1.0 - keep * (1.0 - m)
    if objective == "pred_noise":
        return clipped_fused / fused_snr
    if objective == "pred_x0":
        return clipped_fused * C
    if objective == "pred_v":
        return clipped_fused * C / (fused_snr * C + 1.0)
    raise ValueError(f"unknown objective {objective!r}")


# ---- level mapping and scheduling matrices ------------------------------------------------------------

def real_levels(S: int, T: int, device: torch.device | None = None,
                decode_level: int = 0) -> torch.Tensor:
    """(S+1,) long: sampling level j → real level (−1 = clean).

    ``decode_level = 0`` is the official ``long(linspace(−1, T−1, S+1))`` (float32 linspace then
    truncation, as ``Diffusion.sample_step``): real[0] = −1, real[S] = T − 1. With
    ``decode_level = r > 0`` the levels below r are skipped: real[j] = r − 1 + long(linspace(0,
    T − r, S+1))[j] for j ≥ 1 (so real[1] = r when S = T − r), and real[0] = −1, i.e. the last step
    reads the tokens out of x̂0 at level r.
    """
    if decode_level == 0:
        return torch.linspace(-1, T - 1, S + 1, device=device).long()
    real = decode_level - 1 + torch.linspace(0, T - decode_level, S + 1, device=device).long()
    real[0] = -1
    return real


def column_delays(kind: str, H: int, u: float) -> np.ndarray:
    """(H,) int64 delay of each column of a horizon of H tokens: how many rows after the first a
    column starts to move (the pyramid family's ``int(t·u)``). full_sequence: 0; pyramid(u):
    int(t·u); autoregressive: pyramid with u = S (passed in as ``u``); trapezoid (symmetric):
    int(min(t, H − 1 − t)·u). Every matrix of this family is M[m, t] = clip(S + delay_t − m, 0, S),
    height S + max(delay) + 1."""
    t = np.arange(H, dtype=np.float64)
    if kind == "full_sequence":
        return np.zeros(H, dtype=np.int64)
    if kind in ("pyramid", "autoregressive"):
        return (t * u).astype(np.int64)                                      # int(t·u), t·u ≥ 0
    if kind == "trapezoid":
        return (np.minimum(t, H - 1 - t) * u).astype(np.int64)
    raise ValueError(f"unknown scheduling matrix {kind!r}; choose one of {list(MATRICES)}")


def _matrix(delays: np.ndarray, S: int) -> np.ndarray:
    height = S + int(delays.max()) + 1
    return np.clip(S + delays[None, :] - np.arange(height)[:, None], 0, S)


def pyramid_matrix(H: int, S: int, u: float) -> np.ndarray:
    """M[m, t] = clip(S + int(t·u) − m, 0, S), height S + int((H − 1)u) + 1."""
    return _matrix(column_delays("pyramid", H, u), S)


def trapezoid_matrix(H: int, S: int, u: float, official: bool = False) -> np.ndarray:
    """Both ends of the horizon start first; the middle waits longest.

    ``official=True`` reproduces ``_generate_trapezoid_scheduling_matrix`` with its quirks: height
    S + int(⌈H/2⌉u); columns t and −t get S + int(t·u) − m for t < ⌈H/2⌉, so the last column gets
    the t = 1 value (−0 = 0) and, for even H, column H/2 is never written (all 0: "clean" from the
    first row); for fractional u the last row need not be clean.
    The default is the symmetric trapezoid these quirks approximate: M[m, t] = clip(S +
    int(min(t, H−1−t)·u) − m, 0, S), height S + int(((H − 1)//2)·u) + 1, so that, like every other
    matrix, the first row is all S, the last all 0, and each column steps down one level per row.
    """
    if official:
        half = (H + 1) // 2
        height = S + int(half * u)
        M = np.zeros((height, H), dtype=np.int64)
        m = np.arange(height)
        for t in range(half):
            M[:, t] = S + int(t * u) - m
            M[:, -t] = S + int(t * u) - m
        return np.clip(M, 0, S)
    return _matrix(column_delays("trapezoid", H, u), S)


def scheduling_matrix(kind: str, H: int, S: int, u: float) -> torch.Tensor:
    """(height, H) long sampling levels for a horizon of H tokens (``_generate_scheduling_matrix``).

    full_sequence: M[m, t] = S − m (S + 1 rows); pyramid(u); autoregressive = pyramid(u = S), so
    token t starts only when t − 1 is clean (S(H − 1) + S + 1 rows); trapezoid(u) (symmetric, see
    :func:`trapezoid_matrix`).
    """
    if H < 1:
        raise ValueError(f"a scheduling matrix needs a horizon of at least 1 token, got {H}")
    M = _matrix(column_delays(kind, H, float(S) if kind == "autoregressive" else u), S)
    return torch.from_numpy(np.ascontiguousarray(M, dtype=np.int64))


def sampler_states(kind: str, n: int, L: int, S: int, u: float, real: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, L) real levels of window states the sampler feeds to the network (−1 = clean).

    Each row draws a prompt length c ~ U{0..L−1} (positions < c are clean context), takes the
    scheduling matrix M of ``kind`` over the horizon of the other H = L − c tokens, and a row
    m ~ U{0..height − 2} of it (the rows the sampler evaluates the network at; the last, all
    clean, is never fed): levels real[M[m, t − c]]. ``real`` (S+1,) maps sampling levels to real
    ones (:func:`real_levels`). Training on these states (``schedule_fraction``) teaches the
    network the situations generation puts it in, which the official i.i.d. levels reach only
    rarely (a clean context of many tokens has probability (1/T)^c under ``random_all``).
    """
    c = torch.randint(0, L, (n,), generator=generator)
    pick = torch.rand(n, generator=generator, dtype=torch.float64)
    u = float(S) if kind == "autoregressive" else u
    out = torch.full((n, L), -1, dtype=torch.long)
    real_cpu = real.cpu()
    for b in range(n):
        H = L - int(c[b])
        delays = column_delays(kind, H, u)
        height = S + int(delays.max()) + 1
        m = min(int(pick[b] * (height - 1)), height - 2)
        lvl = np.clip(S + delays - m, 0, S)
        out[b, L - H:] = real_cpu[torch.from_numpy(lvl)]
    return out.to(real.device)
