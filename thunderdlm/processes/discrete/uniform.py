"""Uniform-noise discrete diffusion: UDLM in continuous time, D3PM-uniform in discrete time.

Notation map (SPEC.md §4; D3PM, Austin et al. 2021; UDLM, Schiff et al. 2024, as DUO codes it):

    x0, x_t     clean / noised tokens (B, L); V = the tokenizer's vocabulary (no token is added)
    α_t         keep probability: q(x_t | x0) = α_t·onehot(x0) + (1 − α_t)/V, α_0 = 1, α_1 = ε
    α_{t|s}     α_t / α_s, the keep probability from time s < t to t
    x_θ, p̃_θ    the network's softmax over the V clean tokens at every position
    den(z)      V·q(x_t | x0 = z) = α_t V [z = x_t] + 1 − α_t       (one value per candidate z)

Forward: each token is kept with probability α_t, otherwise replaced by a uniformly random
vocabulary token (possibly itself). Prior: uniform random tokens (exactly q(x_1 | x0) when ε = 0).

Note 002 ("LDLM") trains the network to output "the noise tokens that were added". Those tokens
are drawn uniformly at random, independently of everything the network sees, so that target is
unlearnable (its best cross-entropy is log V whatever the model). The network here predicts the
**clean tokens x0**, which is what the reverse process needs.

Posterior (§4.4), for a clean distribution x (one-hot, or a model's), linear in x:

    q(x_s | x_t, x) ∝ α_t V x⊙onehot(x_t) + (α_{t|s} − α_t)·Σx·onehot(x_t) + (α_s − α_t)·x
                      + (1 − α_{t|s})(1 − α_s)/V·Σx

(Bayes' rule with q(x_t | x_s) = α_{t|s}δ + (1 − α_{t|s})/V; for x = Σ_z w(z) onehot(z) it is
the mixture of the one-hot posteriors with weights ∝ w(z)·den(z)).

Two time modes in one config (``process.time``):

* ``continuous`` — UDLM. The reverse step plugs x_θ into the posterior ("mean" parameterisation):
  p_θ(x_s | x_t) = q(x_s | x_t, x_θ). Its continuous-time NELBO (§4.5) per token is

      NELBO = KL(q(x_1|x0) ‖ U) + ∫_0^1 E_{x_t} ℓ_t dt,
      ℓ_t = (−α'_t / (V α_t)) Σ_{y ≠ x_t} r_y·h(log r̂_y − log r_y),   h(d) = e^d − 1 − d ≥ 0,
      r_y = x̄[y] / x̄[x_t],   x̄ = 1 − α_t + V α_t·onehot(x0)       (true reverse-rate ratio)
      r̂_y = x̄_θ[y] / x̄_θ[x_t], x̄_θ = 1 − α_t + V α_t·x_θ            (the model's)

  — the KL rate between the true reverse chain given x0 (rate −α'/(Vα)·r_y from x_t to y) and the
  model's; it equals DUO's ``nll_per_token`` (term1 − term2) term by term (tested), written as a
  Bregman divergence so that it is visibly ≥ 0 and stable in float64. The optimal x_θ is
  p(x0^i | x_t^{−i}): the evidence of the token x_t^i itself enters through den, not through x_θ.
* ``discrete`` — D3PM-uniform with T steps at t_k = k/T. The reverse model mixes the one-hot
  posteriors q(x_{k−1} | x_k, z) over candidate clean tokens z; ``process.parameterization`` picks
  the mixture weights (SPEC.md §9):

      d3pm       p_θ(x_{k−1} | x_k) ∝ Σ_z p̃_θ(z | x_k) q(x_{k−1}, x_k | z)        (Austin et al. eq. 4)
                 weights ∝ p̃(z)·q(x_k | z): the formula above with w = p̃ (google-research
                 ``q_posterior_logits(x_start=probs, x_t)``, fact1·fact2). Exact when p̃ is the
                 x0-distribution *before* seeing x_k's own token (like UDLM's x_θ).
      posterior  p_θ(x_{k−1} | x_k) = Σ_z p̃_θ(z | x_k) q(x_{k−1} | x_k, z)
                 weights p̃(z): w = p̃/den. Exact when p̃ is the posterior p(x0 | x_k) — what
                 cross-entropy on x0 (``loss: ce``) trains p̃ to be.

  Both are valid reverse models and the NELBO below is a bound for either; on the same logits
  they differ (the d3pm weights count the evidence q(x_k | z) once more). ``d3pm`` is the default:
  on the note-002 preset (loss ce, so both runs train the very same weights) its validation bound
  was 7.15 vs 17.10 nats/token after 100 steps and 6.37 vs 16.28 after 200 — a network early in
  training has not learned that x_k's own token is usually x0, and the d3pm weights supply that
  evidence exactly; the posterior reading must learn it. The exact discrete-time NELBO

      NELBO = KL(q(x_T|x0) ‖ U) + Σ_{k=2}^T E KL(q(x_{k−1}|x_k,x0) ‖ p_θ(x_{k−1}|x_k)) + E[−log p_θ(x0|x_1)]

  is estimated with one k ~ U{1..T} per sequence as T·L_k; L_1, the reconstruction term, is the
  same KL at α_0 = 1 (q(x_0 | x_1, x0) is one-hot). Cross-entropy on x0 (``loss: ce``, note 002's
  corrected objective) trains p̃ towards p(x0 | x_k), which is consistent with the ``posterior``
  weights; ``hybrid`` = NELBO + λ·CE is D3PM's L_λ.

Sampling (``step``): ancestral, x_s ~ p_θ(x_s | x_t) with the network's logits filtered by
top-k / top-p and divided by the temperature; the last step (s = 0, α_s = 1) draws clean tokens,
so ``finalize`` has nothing left to do. Every token looks real under uniform noise, so
confidence-based remasking (``low_confidence`` / ``random``) is served by freezing committed
positions (``processes/discrete/commit.py``): each step commits ``n_commit`` undecided positions to a
draw from the model's p(x0 | x_t) and moves the others one ancestral step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.config import check, param
from thunderdlm import rng
from thunderdlm.processes.base import (LossOutput, Process, StepContext, StepOutput, check_valid,
                                        pad_kwargs, real_mean)
from thunderdlm.processes.discrete.commit import decided_positions, select_confident
from thunderdlm.processes.config import ProcessConfig
from thunderdlm.processes.discrete.masked import stratified_times
from thunderdlm.processes.discrete.schedules import SCHEDULES, build_schedule
from thunderdlm.categorical import draw_tokens, sample_categorical, warp_logits

TIME_MODES = ("continuous", "discrete")
LOSSES = ("nelbo", "ce", "hybrid")
PARAMETERIZATIONS = ("d3pm", "posterior")


@dataclass
class UniformConfig(ProcessConfig):
    name: str = param("uniform", help="uniform-noise diffusion: UDLM (continuous) / D3PM-uniform (discrete)")
    time: str = param("continuous", choices=TIME_MODES,
                      help="continuous: UDLM, t ∈ (0, 1] and its continuous-time NELBO; discrete: "
                           "D3PM-uniform with process.steps steps and its discrete-time NELBO")
    steps: int = param(1000, help="discrete time only: number of diffusion steps T (note 002, D3PM: 1000)")
    schedule: str = param("loglinear", choices=tuple(SCHEDULES),
                          help="keep probability α_t (discrete: α at t_k = k/T); d3pm_cosine is D3PM's "
                               "cosine for uniform noise (cos), cosine_squared Nichol & Dhariwal's "
                               "(cos²), loglinear UDLM's")
    eps: float = param(0.0, help="α_1 = eps; 0 makes the uniform prior exact (UDLM/DUO use 1e-3; the "
                                 "bound then includes KL(q(x_1|x0) ‖ U))")
    sampling_eps: float = param(1e-3, help="continuous time: training draws t in [sampling_eps, 1] (the "
                                           "bound for evaluation integrates over all of (0, 1])")
    stratified: bool = param(True, help="one t (or k) per stratum of the batch (MDLM's 'antithetic')")
    loss: str = param("nelbo", choices=LOSSES,
                      help="training loss: nelbo (the bound itself); ce = −log p̃(x0|x_k) at every "
                           "position (note 002 with the corrected target; discrete time only); "
                           "hybrid = nelbo + ce_weight·ce (D3PM's L_λ; discrete time only)")
    ce_weight: float = param(0.01, help="hybrid loss: weight λ of the cross-entropy term")
    parameterization: str = param(
        "d3pm", choices=PARAMETERIZATIONS,
        help="discrete time only: the reverse model's mixture of one-hot posteriors q(x_{k−1}|x_k,z). "
             "d3pm = D3PM's (Austin et al. eq. 4), weights p̃(z)·q(x_k|z) — the default: on the "
             "note-002 preset its bound was 6.37 vs 16.28 nats/token after 200 equal steps; "
             "posterior = weights p̃(z), p̃ read as p(x0|x_k) (exact for the exact posterior)")

    def __post_init__(self):
        check(self.steps >= 1, "process.steps", f"must be ≥ 1, got {self.steps}")
        check(0.0 <= self.eps < 1.0, "process.eps", f"must be in [0, 1), got {self.eps}")
        check(0.0 <= self.sampling_eps < 1.0, "process.sampling_eps",
              f"must be in [0, 1), got {self.sampling_eps}")
        check(self.ce_weight >= 0.0, "process.ce_weight", f"must be ≥ 0, got {self.ce_weight}")
        check(self.loss == "nelbo" or self.time == "discrete", "process.loss",
              f"'{self.loss}' needs process.time=discrete: in continuous time (UDLM) x_θ is not an "
              "estimate of p(x0 | x_t), so cross-entropy on x0 would train the wrong thing; use nelbo")


# ---- the posterior and the two bounds (pure functions of tensors, float64) --------------------------

def posterior(w: torch.Tensor, xt: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """q(x_s | x_t, x = w) normalised over x_s: w (B, L, V) ≥ 0 (any scale), xt (B, L), α_t, α_s (B,)."""
    V = w.shape[-1]
    at, as_ = a_t[:, None, None], a_s[:, None, None]                                # (B, 1, 1)
    ats = at / as_                                                                   # α_{t|s}
    hot = F.one_hot(xt, V).to(w.dtype)                                               # (B, L, V)
    W = w.sum(-1, keepdim=True)                                                      # (B, L, 1)
    num = at * V * w * hot + (ats - at) * W * hot + (as_ - at) * w + (1 - ats) * (1 - as_) / V * W
    return num / num.sum(-1, keepdim=True)


def likelihood_den(xt: torch.Tensor, a_t: torch.Tensor, V: int, dtype=torch.float64) -> torch.Tensor:
    """den(z) = V·q(x_t | x0 = z) = α_t V [z = x_t] + 1 − α_t: (B, L, V)."""
    at = a_t[:, None, None].to(dtype)
    return at * V * F.one_hot(xt, V).to(dtype) + (1 - at)


def udlm_rate_kl(logp: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, a: torch.Tensor,
                 da: torch.Tensor) -> torch.Tensor:
    """UDLM's continuous-time NELBO integrand ℓ_t per position (B, L).

    logp (B, L, V): log x_θ (float64); a, da (B,): α_t and α'_t. Zero where α_t = 0 (its limit).
    """
    V = logp.shape[-1]
    a3 = a[:, None, None]
    log_bar_model = torch.log1p(a3 * (V * logp.exp() - 1))                             # log x̄_θ
    log_bar_true = torch.log1p(a3 * (V * F.one_hot(x0, V).to(logp.dtype) - 1))         # log x̄
    log_r_hat = log_bar_model - log_bar_model.gather(-1, xt.unsqueeze(-1))              # (B, L, V)
    log_r = log_bar_true - log_bar_true.gather(-1, xt.unsqueeze(-1))
    d = log_r_hat - log_r                                                               # 0 at y = x_t
    bregman = (log_r.exp() * (torch.expm1(d) - d)).sum(-1)                              # (B, L)
    live = a > 0
    weight = torch.where(live, -da / (V * torch.where(live, a, torch.ones_like(a))), torch.zeros_like(a))
    return weight[:, None] * bregman


def categorical_kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) over the last axis, 0·log 0 = 0: (B, L, V) → (B, L)."""
    return (torch.xlogy(q, q) - q * torch.log(p.clamp_min(1e-300))).sum(-1)


def prior_kl(a1: float, V: int) -> float:
    """KL(q(x_1 | x0) ‖ U) per token when α_1 = a1 (0 when a1 = 0)."""
    hit, miss = a1 + (1 - a1) / V, (1 - a1) / V
    return hit * math.log(hit * V) + (V - 1) * (miss * math.log(miss * V) if miss > 0 else 0.0)


class UniformProcess(Process):
    name = "uniform"
    config_cls = UniformConfig

    def __init__(self, cfg: UniformConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.schedule = build_schedule(cfg.schedule, cfg.eps)
        self.discrete = cfg.time == "discrete"
        a1 = float(self.schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
        self.prior_kl = prior_kl(max(a1, 0.0), vocab_size)       # nats per token, model-free

    # ---- forward process -------------------------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.schedule.alpha(t.double()).clamp(0.0, 1.0)

    def conditioning(self, t: torch.Tensor) -> torch.Tensor:
        """σ(t) = −log α_t fed to the network (clamped where α_t = 0); always on (UDLM needs it)."""
        return self.schedule.sigma_for_conditioning(t.double()).float()

    def corrupt(self, x0: torch.Tensor, a: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t: keep each token with probability α (B,), else a uniformly random token."""
        u = torch.rand(x0.shape, device=x0.device, generator=generator)
        noise = torch.randint(0, self.vocab_size, x0.shape, device=x0.device, generator=generator)
        return torch.where(u < a[:, None].to(u.dtype), x0, noise)

    def _times(self, n: int, device, generator, clip: float) -> torch.Tensor:
        """(n,) float64 times: continuous t in [clip, 1]; discrete t_k = k/T with k ∈ {1..T}."""
        u = stratified_times(n, device, generator, self.cfg.stratified).double()      # (0, 1]
        if self.discrete:
            k = torch.ceil(u * self.cfg.steps).clamp(1, self.cfg.steps)
            return k / self.cfg.steps
        return clip + (1.0 - clip) * u

    # ---- bounds ----------------------------------------------------------------------------------
    def bound_terms(self, logits: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor,
                    t: torch.Tensor) -> torch.Tensor:
        """The bound's integrand per position (B, L), prior term excluded: ℓ_t (continuous) or
        T·KL(q(x_{k−1}|x_k,x0) ‖ p_θ(x_{k−1}|x_k)) at t = k/T (discrete). logits (B, L, V), t (B,)."""
        a_t = self.alpha(t)
        logp = torch.log_softmax(logits.double(), dim=-1)                                 # (B, L, V)
        if not self.discrete:
            return udlm_rate_kl(logp, xt, x0, a_t, self.schedule.dalpha(t.double()))
        k = torch.round(t.double() * self.cfg.steps)                                      # (B,) in 1..T
        a_s = self.alpha((k - 1) / self.cfg.steps)                                        # α_0 = 1
        q = posterior(F.one_hot(x0, self.vocab_size).double(), xt, a_t, a_s)
        p = posterior(self._mixture_weights(logits, xt, a_t), xt, a_t, a_s)
        return self.cfg.steps * categorical_kl(q, p)

    def nelbo_at(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor,
                 generator: torch.Generator | None = None,
                 valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(NELBO per real token (B,), logits (B, L, V), x_t) for one draw of x_t at times t (B,);
        ``valid`` (B, L) marks real tokens (padding hidden from the network, left out of the mean)."""
        xt = self.corrupt(x0, self.alpha(t), generator)
        logits = model(xt, self.conditioning(t), **pad_kwargs(valid)).float()             # (B, L, V)
        per_seq = real_mean(self.bound_terms(logits, xt, x0, t), valid)
        return per_seq + self.prior_kl, logits, xt

    def _ce(self, logits: torch.Tensor, x0: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Mean −log p̃(x0 | x_k) over the real positions of the batch: ()."""
        ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")               # (B, L)
        return ce.mean() if valid is None else ce[valid].mean()

    def loss(self, model: nn.Module, x0: torch.Tensor, valid: torch.Tensor | None = None) -> LossOutput:
        check_valid(x0, valid)
        t = self._times(x0.shape[0], x0.device, None, self.cfg.sampling_eps)
        if self.cfg.loss == "ce":      # note 002 (corrected): −log p̃(x0 | x_k) at every position
            xt = self.corrupt(x0, self.alpha(t))
            logits = model(xt, self.conditioning(t), **pad_kwargs(valid)).float()
            ce = self._ce(logits, x0, valid)
            return LossOutput(ce, {"noise_frac": (xt != x0).float().mean().item()})
        per_seq, logits, xt = self.nelbo_at(model, x0, t, valid=valid)
        nelbo = per_seq.mean().float()
        metrics = {"noise_frac": (xt != x0).float().mean().item()}
        if self.cfg.loss == "nelbo":
            return LossOutput(nelbo, metrics)
        ce = self._ce(logits, x0, valid)                                                  # hybrid
        metrics.update(nelbo=nelbo.item(), ce=ce.item())
        return LossOutput(nelbo + self.cfg.ce_weight * ce, metrics)

    def nelbo(self, model: nn.Module, x0: torch.Tensor,
              generator: torch.Generator | None = None,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        # the full range: t ∈ (0, 1] (no sampling_eps clip) or k ∈ {1..T}; unbiased
        check_valid(x0, valid)
        t = self._times(x0.shape[0], x0.device, generator, 0.0)
        return self.nelbo_at(model, x0, t, generator, valid)[0]

    # ---- sampling --------------------------------------------------------------------------------
    def prior(self, shape, device, generator=None) -> torch.Tensor:
        return rng.randint(0, self.vocab_size, shape, generator, device=device)

    def _condition_time(self, t: float) -> float:
        """Discrete time: the network saw only t_k = k/T, so condition on the nearest grid time."""
        if not self.discrete:
            return t
        return max(round(t * self.cfg.steps), 1) / self.cfg.steps

    @property
    def reads_posterior(self) -> bool:
        """True when the network's softmax is read as p(x0 | x_t) itself (discrete ``posterior``);
        False when it is read before the evidence of x_t's own token (UDLM's x_θ, D3PM's p̃)."""
        return self.discrete and self.cfg.parameterization == "posterior"

    def _mixture_weights(self, logits: torch.Tensor, x: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        """w of p_θ(x_s|x_t) = q(x_s | x_t, w), (B, L, V) float64 from logits (B, L, V): the softmax
        itself (UDLM, D3PM: mixture weights ∝ p̃(z)·den(z)) or p̃/den (``posterior``: weights p̃(z))."""
        probs = torch.softmax(logits.double(), dim=-1)
        return probs / likelihood_den(x, a_t, self.vocab_size) if self.reads_posterior else probs

    def x0_logits(self, logits: torch.Tensor, x: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        """The model's log p(x0 | x_t) up to a constant: p̃ (``posterior``) or p̃·den (UDLM's and
        D3PM's Bayes step with the token's own evidence)."""
        if self.reads_posterior:
            return logits
        return logits + torch.log(likelihood_den(x, a_t, self.vocab_size, logits.dtype))

    def step(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> StepOutput:
        if not ctx.editable.any():
            return StepOutput(x, x)
        B, opts = x.shape[0], ctx.options
        t = torch.full((B,), ctx.t, dtype=torch.float64, device=x.device)
        s = torch.full((B,), max(ctx.s, 0.0), dtype=torch.float64, device=x.device)
        a_t, a_s = self.alpha(t), self.alpha(s)
        logits = model(x, self.conditioning(torch.full_like(t, self._condition_time(ctx.t)))).float()
        ctx.nfe += 1
        # ancestral draw x_s ~ p_θ(x_s | x_t) with the tempered / filtered prediction
        if opts.temperature <= 0:
            shaped = torch.where(F.one_hot(logits.argmax(-1), self.vocab_size).bool(), 0.0, float("-inf"))
        else:
            shaped = warp_logits(logits, opts.temperature, opts.top_k, opts.top_p)
        probs = posterior(self._mixture_weights(shaped, x, a_t), x, a_t, a_s)
        x_s = sample_categorical(probs, ctx.generator)
        x0_logits = self.x0_logits(logits, x, a_t)
        x0_hat = x0_logits.argmax(-1)
        if ctx.n_commit is None or opts.remasking == "ancestral":
            return StepOutput(x_s, x0_hat)
        decided = decided_positions(x, ctx)
        cand = draw_tokens(x0_logits, opts.temperature, opts.top_k, opts.top_p, ctx.generator)
        commit = select_confident(torch.softmax(x0_logits, dim=-1), cand, ctx.editable & ~decided, ctx)
        x_new = torch.where(commit, cand, torch.where(decided, x, x_s))
        decided |= commit
        return StepOutput(x_new, torch.where(decided, x_new, x0_hat))
