"""Score-entropy discrete diffusion (SEDD, Lou et al. 2024; user note 003): the network learns the
concrete score of a forward CTMC on tokens (``processes/discrete/graphs.py``) by denoising score entropy.

Notation map (SPEC.md §3):

    x0, x_t     clean / noised tokens (B, L)
    σ(t), σ'    total noise and its rate: log-linear σ = −log(1 − (1−ε)t), or geometric
                σ = σ_min^{1−t} σ_max^t (``schedules.py``); α_t = e^{−σ(t)}
    Q           the graph's rate matrix (absorb: every token → M at rate 1; uniform: 11ᵀ/V − I)
    s_θ(x_t)    the concrete score s_y ≈ p_t(x_t with x^i ← y) / p_t(x_t), per position and y
    r_y         the true ratio given x0: q(y | x0) / q(x_t^i | x0)

Network output → log score (SEDD's ``model/transformer.py``, done here, not in the backbone):
``log s = out`` with the current token's entry set to 0 (the scatter); for the absorbing graph
``scale_by_sigma`` subtracts log(e^σ − 1) + log V, so that an all-zero (initial) output already has
Σ_{y≠M} s_y = 1/(e^σ − 1), the right total. The absorbing graph works with ℓ = log s − log r
(= out − log V when scaled), which keeps every formula finite at σ = ∞.

Denoising score entropy (§3.4), the training loss and the bound:

    NELBO = E[−log p_rec(x0 | x_{t=0})] + ∫_0^1 E_{x_t} Σ_i σ'(t)·SE_i dt / L + KL(q(x_1|x0) ‖ π),
    SE_i = Σ_{y≠x_t^i} Q[y, x_t^i]·(s_y − r_y log s_y + r_y(log r_y − 1))  ≥ 0, = 0 at s = r.

Training draws t ∈ [sampling_eps, 1] (stratified over the batch) and averages over positions (per
token, not SEDD's per-sequence sum; the same optimum). For the absorbing graph with log-linear
noise and ε = 0 (our default; SEDD uses ε = 10⁻³) the chain ends in the all-mask prior and
there is no reconstruction term, so the bound is exact; it then equals MDLM's bound plus
w(t)·(Z − 1 − log Z) ≥ 0 per masked token, Z = Σ_y e^{ℓ_y} (SEDD's score need not be
normalised). SEDD drops the prior term; with ε > 0 or geometric noise on the absorbing graph it
is infinite (a point-mass prior) and is dropped here too — not a strict bound then, as in
``masked.py``. Geometric noise starts at σ_min > 0, so a model-free reconstruction channel costs
(1 − e^{−σ_min})·log V nats (absorb) or H_b(ρ) + ρ log(V − 1) with ρ = (1 − e^{−σ_min})(V−1)/V
(uniform), about 10⁻³ nats per token at σ_min = 10⁻⁴; the uniform graph's prior KL is analytic.

Sampling (``step``): the loop's t ∈ [0, 1] maps to SEDD's t' = t_min + (1 − t_min)t
(timesteps ``linspace(1, t_min, N+1)``). ``predictor: euler`` draws x ~ onehot(x) + Δt·σ'(t)·R
with R the model's reverse rates; ``analytic`` (Tweedie τ-leaping) draws from
staggered(s, Δσ) ⊙ exp(ΔσQ)[x, ·]; ``finalize`` is SEDD's denoiser at t_min (the analytic step to
σ = 0, the mask column dropped). Temperature / top-k / top-p reshape where a position *jumps to*
(the mass of leaving its state is kept). Confidence remasking (``low_confidence`` / ``random``)
commits ``n_commit`` positions to draws from the model's p(x0 | x_t): masked positions for the
absorbing graph (the rest stay masked, as LLaDA), frozen decided positions for the uniform graph
(``processes/discrete/commit.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from thunderdlm.config import check, param
from thunderdlm import rng
from thunderdlm.processes.base import (LossOutput, Process, SampleOptions, StepContext, StepOutput,
                                        check_valid, pad_kwargs, real_mean)
from thunderdlm.processes.discrete.commit import decided_positions, select_confident
from thunderdlm.processes.config import ProcessConfig
from thunderdlm.processes.discrete.graphs import GRAPHS, build_graph
from thunderdlm.processes.discrete.masked import stratified_times
from thunderdlm.processes.discrete.schedules import Geometric, LogLinear, Schedule
from thunderdlm.categorical import draw_tokens, sample_categorical, warp_logits

NOISES = ("loglinear", "geometric")
PREDICTORS = ("euler", "analytic")


@dataclass
class ScoreEntropyConfig(ProcessConfig):
    name: str = param("score_entropy", help="score-entropy discrete diffusion (SEDD)")
    graph: str = param("absorb", choices=tuple(GRAPHS),
                       help="forward CTMC: absorb (tokens → mask, adds the mask token) or uniform")
    noise: str = param("loglinear", choices=NOISES,
                       help="σ(t): loglinear (SEDD's default, used with absorb) or geometric "
                            "(σ_min^{1−t} σ_max^t, SEDD's pairing for the uniform graph)")
    eps: float = param(0.0, help="loglinear: α_1 = eps. 0 ends the absorbing chain exactly in the "
                                 "all-mask prior (SEDD: 1e-3); the uniform graph needs eps > 0")
    sigma_min: float = param(1e-4, help="geometric noise: σ(0) (SEDD's default)")
    sigma_max: float = param(20.0, help="geometric noise: σ(1) (SEDD's default)")
    scale_by_sigma: bool = param(True, help="absorbing graph only: log s = out − log(e^σ − 1) − log V, "
                                            "so the initial (zero) output has the right total score; "
                                            "ignored by the uniform graph (SEDD leaves it off there)")
    predictor: str = param("euler", choices=PREDICTORS,
                           help="reverse step: euler (SEDD's default) or analytic (Tweedie τ-leaping)")
    sampling_eps: float = param(1e-3, help="training draws t in [sampling_eps, 1] (the bound for "
                                           "evaluation integrates over all of (0, 1])")
    t_min: float = param(1e-5, help="sampling sweeps t from 1 to t_min; the denoiser removes the rest")
    stratified: bool = param(True, help="one t per stratum of the batch (SEDD draws them i.i.d.)")

    def __post_init__(self):
        check(0.0 <= self.eps < 1.0, "process.eps", f"must be in [0, 1), got {self.eps}")
        check(0.0 < self.sigma_min < self.sigma_max, "process.sigma_min",
              f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        check(0.0 <= self.sampling_eps < 1.0, "process.sampling_eps",
              f"must be in [0, 1), got {self.sampling_eps}")
        check(0.0 < self.t_min < 1.0, "process.t_min", f"must be in (0, 1), got {self.t_min}")
        check(not (self.graph == "uniform" and self.noise == "loglinear" and self.eps == 0), "process.eps",
              "the uniform graph needs a finite σ(1): set process.noise=geometric (SEDD's choice for "
              "this graph) or process.eps=1e-3")
        check(not (self.graph == "absorb" and not self.scale_by_sigma and self.noise == "loglinear"
                   and self.eps == 0), "process.scale_by_sigma",
              "an unscaled absorbing score must reach 0 at t = 1 where σ = ∞ (eps = 0); keep "
              "process.scale_by_sigma=true or set process.eps=1e-3 as SEDD does")


def build_noise(cfg: ScoreEntropyConfig) -> Schedule:
    if cfg.noise == "geometric":
        return Geometric(cfg.sigma_min, cfg.sigma_max)
    return LogLinear(cfg.eps)


def shape_jumps(probs: torch.Tensor, x: torch.Tensor, opts: SampleOptions) -> torch.Tensor:
    """Apply temperature → top-k → top-p (``warp_logits``) to where each position jumps (y ≠ x),
    keeping the probability of staying at x and the total mass of jumping. probs (B, L, D) ≥ 0
    unnormalised."""
    if opts.temperature == 1.0 and opts.top_k == 0 and opts.top_p >= 1.0:
        return probs
    idx = x.unsqueeze(-1)
    stay = probs.gather(-1, idx)
    jump = probs.clamp_min(0.0).scatter(-1, idx, 0.0)
    mass = jump.sum(-1, keepdim=True)
    logits = torch.log(jump)
    if opts.temperature <= 0:
        shaped = torch.nn.functional.one_hot(logits.argmax(-1), probs.shape[-1]).to(probs.dtype)
    else:
        shaped = torch.softmax(warp_logits(logits, opts.temperature, opts.top_k, opts.top_p), dim=-1)
    shaped = torch.where(mass > 0, shaped * mass, torch.zeros_like(shaped))
    return shaped.scatter(-1, idx, stay)


class ScoreEntropyProcess(Process):
    name = "score_entropy"
    config_cls = ScoreEntropyConfig

    def __init__(self, cfg: ScoreEntropyConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.graph = build_graph(cfg.graph, vocab_size)
        self.noise = build_noise(cfg)
        one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        # model-free ends of the bound (nats per token): prior KL at t = 1, reconstruction at t = 0
        self.bound_constant = (self.graph.prior_kl(float(self.noise.alpha(one)))
                               + self.graph.reconstruction_nats(float(self.noise.alpha(zero))))

    @property
    def model_vocab_size(self) -> int:
        return self.graph.dim

    @property
    def noise_token_id(self) -> int | None:
        return self.graph.mask_id

    def is_noisy(self, x: torch.Tensor) -> torch.Tensor:
        if self.graph.absorb:
            return x == self.graph.mask_id
        return torch.ones_like(x, dtype=torch.bool)

    # ---- network output → score parameter ------------------------------------------------------
    def conditioning(self, t: torch.Tensor) -> torch.Tensor:
        """σ(t) fed to the network (SEDD feeds the total noise; ∞ at t = 1, ε = 0 is clamped)."""
        return self.noise.sigma_for_conditioning(t.double()).float()

    def score_param(self, out: torch.Tensor, xt: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The graph's parameter (B, L, D) float64 from the network output ``out`` (B, L, D).

        absorb: ℓ = log s − log r with r = α/(1 − α); scale_by_sigma makes it out − log V (SEDD's
        out − log(e^σ − 1) − log(D − 1) minus log r = −log(e^σ − 1)). uniform: log s = out with
        the current token's entry scattered to 0 (SEDD's last line)."""
        out = out.double()
        if self.graph.absorb:
            if self.cfg.scale_by_sigma:
                return out - math.log(self.vocab_size)
            log_r = torch.log(alpha) - torch.log1p(-alpha)                           # (B,)
            return out - log_r[:, None, None]
        return out.scatter(-1, xt.unsqueeze(-1), 0.0)

    # ---- loss and bound --------------------------------------------------------------------------
    def dse_at(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor,
               generator: torch.Generator | None = None,
               valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(∫-integrand estimate per real token (B,), x_t) at times t (B,) float64; ``valid``
        (B, L) marks real tokens (padding hidden from the network, left out of the mean)."""
        alpha = self.noise.alpha(t)
        xt = self.graph.sample_transition(x0, alpha, generator)
        out = model(xt, self.conditioning(t), **pad_kwargs(valid)).float()           # (B, L, D)
        param = self.score_param(out, xt, alpha)
        per_pos = self.graph.score_entropy(param, xt, x0, alpha, self.noise.dsigma(t),
                                           self.noise.nelbo_weight(t))               # (B, L)
        return real_mean(per_pos, valid), xt

    def _times(self, n: int, device, generator, clip: float) -> torch.Tensor:
        u = stratified_times(n, device, generator, self.cfg.stratified).double()     # (0, 1]
        return clip + (1.0 - clip) * u

    def loss(self, model: nn.Module, x0: torch.Tensor, valid: torch.Tensor | None = None) -> LossOutput:
        check_valid(x0, valid)
        t = self._times(x0.shape[0], x0.device, None, self.cfg.sampling_eps)
        per_seq, xt = self.dse_at(model, x0, t, valid=valid)
        return LossOutput(per_seq.mean().float(), {"noise_frac": (xt != x0).float().mean().item()})

    def nelbo(self, model: nn.Module, x0: torch.Tensor,
              generator: torch.Generator | None = None,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        check_valid(x0, valid)
        t = self._times(x0.shape[0], x0.device, generator, 0.0)                       # all of (0, 1]
        return self.dse_at(model, x0, t, generator, valid)[0] + self.bound_constant

    # ---- sampling --------------------------------------------------------------------------------
    def prior(self, shape, device, generator=None) -> torch.Tensor:
        return self.graph.prior(shape, device, generator)

    def _sedd_time(self, t: float, device) -> torch.Tensor:
        t_sedd = self.cfg.t_min + (1.0 - self.cfg.t_min) * t
        return torch.full((1,), t_sedd, dtype=torch.float64, device=device)

    def _evaluate(self, model, x, t: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        ctx.nfe += 1
        out = model(x, self.conditioning(t).expand(x.shape[0])).float()
        return self.score_param(out, x, self.noise.alpha(t).expand(x.shape[0]))

    def step(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> StepOutput:
        todo = ctx.editable & self.is_noisy(x)
        if not todo.any():
            return StepOutput(x, x)
        B, opts = x.shape[0], ctx.options
        t, s = self._sedd_time(ctx.t, x.device), self._sedd_time(max(ctx.s, 0.0), x.device)
        a_t, a_s = self.noise.alpha(t).expand(B), self.noise.alpha(s).expand(B)
        param = self._evaluate(model, x, t, ctx)
        if self.cfg.predictor == "euler":
            probs = self.graph.euler_probs(param, x, a_t, (t - s).expand(B), self.noise.dsigma(t).expand(B),
                                           self.noise.nelbo_weight(t).expand(B))
        else:
            probs = self.graph.analytic_probs(param, x, a_t, a_s)
        active = todo.any(dim=1)                    # (B,) rows with noise left: only they draw
        jumps = shape_jumps(probs, x, opts)
        x_s = rng.draw_rows(ctx.generator, active, lambda g, r: sample_categorical(jumps[r], g), x)
        x0_probs = self.graph.x0_probs(param, x, a_t)                                 # (B, L, V)
        x0_hat = x0_probs.argmax(-1)
        if ctx.n_commit is None or opts.remasking == "ancestral":
            return StepOutput(x_s, x0_hat)
        cand = rng.draw_rows(ctx.generator, active, lambda g, r: draw_tokens(
            torch.log(x0_probs[r]), opts.temperature, opts.top_k, opts.top_p, g), x)
        if self.graph.absorb:          # LLaDA: commit the chosen masked positions, the rest stay masked
            commit = select_confident(x0_probs, cand, todo, ctx)
            return StepOutput(torch.where(commit, cand, x), torch.where(todo, x0_hat, x))
        decided = decided_positions(x, ctx)
        commit = select_confident(x0_probs, cand, ctx.editable & ~decided, ctx)
        x_new = torch.where(commit, cand, torch.where(decided, x, x_s))
        decided |= commit
        return StepOutput(x_new, torch.where(decided, x_new, x0_hat))

    def finalize(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """SEDD's denoiser at t_min: the analytic step to σ = 0, the mask column dropped.

        After confidence remasking every position has been committed (the loop's schedule ends
        each block with none left), and committed tokens are final: nothing to denoise."""
        todo = ctx.editable & self.is_noisy(x)
        if not todo.any() or (not self.graph.absorb and ctx.options.remasking != "ancestral"):
            return x
        t = self._sedd_time(0.0, x.device)
        param = self._evaluate(model, x, t, ctx)
        probs = self.graph.denoise_probs(param, x, self.noise.alpha(t).expand(x.shape[0]))
        probs = shape_jumps(probs, x, ctx.options)[..., : self.vocab_size]
        drawn = rng.draw_rows(ctx.generator, todo.any(dim=1),
                              lambda g, r: sample_categorical(probs[r], g), x)
        return torch.where(todo, drawn, x)
