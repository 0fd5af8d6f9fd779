"""Diffusion Forcing for text, and teacher forcing on the same GPT (note 004; SPEC.md §5.1, §6).

Notation map (Chen et al. 2024, "Diffusion Forcing"; official code buoyancy99/diffusion-forcing):

    w = (w_1..w_L)   a clean window of tokens;  V the tokenizer's vocabulary (+1 BOS row, AR's)
    e(w)             LN(wte[w]) ∈ R^D: the clean token embedding x0 (parameter-free LayerNorm);
                     positions are NOT part of x0: the GPT adds them to every input, noisy or
                     clean, so the noise never hides where a token is and x0 decodes without them
    k_i              the real noise level of token i, i.i.d. U{0..T−1} in training ("random_all");
                     −1 means clean
    x_i              √ᾱ_{k_i} e(w_i) + √(1 − ᾱ_{k_i}) ε_i,  ε = clamp(N(0, I), ±clip_noise)
    f_θ(x, k)        the causal network (``network.py``): every token at its own level
    w_i(k)           the fused-SNR loss weight (``schedules.loss_weights``)

Training (``DiffusionForcingBase.training_step`` + ``Diffusion.forward``):

    loss = mean_{i,d} w_i · (out_{i,d} − target_{i,d})²            target ε | x0 | v (objective)
         + λ · mean_i [c_i · −log softmax(−½‖x̂0_i − e_v‖²)_v=w_i]   (rounding)

The first term is the official loss exactly (x0 is detached, as data is in the official code: the
MSE alone would be minimised by collapsing all embeddings to one point). The rounding term
(λ = ``rounding_weight``) trains the embedding table and keeps it decodable: cross-entropy of the
nearest-embedding decoder on the model's x̂0, weighted by the normalised clipped SNR, so it is
full at low noise (where tokens are read out) and fades at pure noise, where x̂0 is a blur (and,
for pred_noise, scaled by 1/√ᾱ): c_i = min(snr_{k_i}, C)/C. With ``rounding_snr_weight: false``,
c_i = 1: the term then also trains x̂0 at high noise, where the MSE weights (min-SNR) are ≈ 0, as
a classifier of w_i from the context: at pure noise that is teacher forcing's next-token task.

Likelihood (``nelbo``, a true upper bound, one network evaluation per draw): the generative model
is the sampler itself with ancestral steps over S_b = ``bound_timesteps`` levels (DDPM when
S_b = T − ``decode_level``, else DDIM with η = 1, whose variance is the q posterior's), one horizon
covering the window, the configured scheduling matrix M (each column steps down one level per
row), clean columns rounded to e(w) and fed at the stabilization level, unclamped Gaussian noise,
and the decoder above reading x̂0 at the last level. Its ELBO over the per-token forward chains q:

    −log p(w) ≤ Σ_i KL(q(x^{T−1}_i | w_i) ‖ N(0, I))
              + Σ_{m<R} Σ_{i moving in row m} E_q[ KL(q(x^{k'}_i | x^k_i, w_i) ‖ p_θ(· | state_m)) ]
              + Σ_i E_q[ −log p_θ(w_i | state when i becomes clean) ]

(R = height − 1 rows; the state of row m has token j at level real(M[m, j]), independent across
tokens under q). With the ancestral variance the KL of a step k → k' is ½(snr_k' − snr_k)·
‖e(w_i) − x̂0_i‖². One draw picks m ~ U{0..R−1}, samples the state from q and returns
(R·Σ_moving terms + Σ prior terms)/L: an unbiased estimate of the bound in nats per token. It
bounds the sampler with temperature 1, ``round_clean``, η = 1 and unclamped noise (the official
±5σ clamp changes a coordinate with probability 6e-7); greedy decoding and η = 0 are other models.

With the ``autoregressive`` matrix and S_b = 1 the sampler is next-token sampling: token i jumps
from pure noise (level T − 1, its vector drawn from N(0, I)) to clean in one network call once the
tokens before it are clean, and is drawn from the decoder there, so p(w_i | w_<i) = E_x[p_θ(w_i |
w_<i, x)] over its noisy vector x. The bound is then Σ_i E_q[−log p_θ(w_i | w_<i, x_i)] + the
prior KL (Jensen, and q(x | w) for N(0, I)): the network's pure-noise cross-entropy with clean
context, a tight bound of the sampler the generic loop runs at one step per token.

Training levels: ``random_all`` (the official i.i.d. levels) for every row, or, for a share
``schedule_fraction`` of the rows, a state the sampler visits (``schedules.sampler_states``:
a clean prompt, then a row of the scheduling matrix); clean tokens are context and carry no loss,
and both loss terms are means over the noisy tokens (for ``random_all`` rows: all of them, which is
the official mean).

Deviations from the official code (each documented where it lives): level −1 is clean with ᾱ = 1,
the DDPM step keeps not-yet-started columns, ``clip_x0`` and ``decode_level`` (diffusion.py),
the symmetric trapezoid (schedules.py), token rounding (sampler.py).

``use_diffusion_forcing: false`` is teacher forcing: loss, likelihood (exact), sampling and the
network are those of the ``autoregressive`` process, delegated to it, on the same GPT.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.config import check, param
from thunderdlm import rng
from thunderdlm.errors import ConfigError
from thunderdlm.processes.autoregressive import AutoregressiveConfig, AutoregressiveProcess
from thunderdlm.processes.base import LossOutput, Process, StepContext, StepOutput, check_valid, pad_kwargs
from thunderdlm.processes.config import ProcessConfig
from thunderdlm.processes.forcing.diffusion import ForcingDiffusion
from thunderdlm.processes.base import unwrap
from thunderdlm.processes.forcing.network import LEVEL_EMBEDDINGS, DiffusionForcingNet
from thunderdlm.processes.forcing.sampler import ForcingSampler, budget_row
from thunderdlm.processes.forcing.schedules import (BETA_SCHEDULES, MATRICES, OBJECTIVES,
                                                    GaussianTables, beta_schedule, real_levels,
                                                    sampler_states, scheduling_matrix, shift_betas)


@dataclass
class ForcingConfig(ProcessConfig):
    name: str = param("forcing", help="diffusion forcing on a causal GPT (note 004), or teacher "
                                      "forcing on the same GPT with use_diffusion_forcing=false")
    use_diffusion_forcing: bool = param(True, help="true: diffusion forcing (per-token noise in "
                                                   "embedding space); false: teacher forcing, "
                                                   "exactly the autoregressive process")
    timesteps: int = param(32, help="T, training noise levels 0..T-1")
    schedule_fraction: float = param(0.0, help="share of each training batch whose rows carry "
                                     "the noise levels of a state the sampler visits (a random "
                                     "prompt length, then a random row of the scheduling matrix "
                                     "over the rest; clean context tokens carry no loss) instead "
                                     "of i.i.d. levels per token; 0 = the official 'random_all'")
    sampling_timesteps: int = param(32, help="S <= T sampling levels; S = T uses DDPM steps, "
                                             "S < T DDIM steps")
    beta_schedule: str = param("cosine", help="beta schedule", choices=BETA_SCHEDULES)
    input_scale: float = param(1.0, help="scale of the network's input (noisy vector + level "
                                         "embedding) in the GPT's residual stream; 1 as the note. "
                                         "The vectors have unit variance per coordinate, 50x "
                                         "nanoGPT's 0.02-std token embeddings, so at 1 the "
                                         "blocks' initial outputs barely move the stream and the "
                                         "context is learned slowly; 0.02 matches the GPT's init")
    snr_shift: float = param(1.0, help="multiply every level's SNR by this (the shifted schedule of "
                                       "'simple diffusion'): < 1 adds noise at every level. A "
                                       "token's identity in D-dim embeddings is settled at SNR ~ a "
                                       "few / D, so at D = 128 most cosine levels are already clean "
                                       "in effect; a shift moves the levels onto the range where "
                                       "the context matters")
    objective: str = param("pred_noise", help="what the network predicts", choices=OBJECTIVES)
    snr_clip: float = param(5.0, help="C: SNR clip of the (fused) min-SNR loss weights")
    cum_snr_decay: float = param(0.95, help="d: decay of the running SNR along the sequence "
                                            "(fused SNR); 0 gives plain min-SNR weights")
    fused_snr: bool = param(True, help="fused SNR weights (the official use_fused_snr); false: "
                                       "per-token min-SNR weights")
    clip_noise: float = param(5.0, help="Gaussian noise (and predicted noise) clamped to +-this")
    ddim_eta: float = param(0.0, help="DDIM eta: 0 deterministic, 1 ancestral-like")
    stabilization_level: int = param(0, help="clean context is fed to the network at level "
                                             "stabilization_level - 1 (0: clean, as it is)")
    scheduling_matrix: str = param("pyramid", help="how tokens of a horizon are denoised together",
                                   choices=MATRICES)
    uncertainty_scale: float = param(1.0, help="pyramid / trapezoid: rows of delay per token")
    window: int = param(0, help="sliding window: at most this many positions are fed to the "
                                "network when sampling (0: the network's context)")
    level_embedding: str = param("sinusoidal", help="noise-level embedding: 'sinusoidal' added "
                                 "(the note) or 'mlp' (concat + MLP, the official Transformer)",
                                 choices=LEVEL_EMBEDDINGS)
    rounding_weight: float = param(1.0, help="lambda: weight of the rounding cross-entropy that "
                                             "trains the embedding table (0: embeddings stay at "
                                             "their random initialisation)")
    head: str = param("regression", choices=("regression", "softmax"),
                      help="regression: the network's D outputs are the objective's target (the "
                           "official code); softmax (Plaid's categorical head): they score every "
                           "token, logits = out·e_v + the Gaussian evidence of the token's own noisy "
                           "vector, x-hat-0 = softmax(logits)·e and tokens are drawn from those "
                           "logits (needs objective pred_x0)")
    rounding_snr_weight: bool = param(True, help="weight the rounding cross-entropy by the clipped "
                                                 "SNR (min(snr, C)/C: it fades at pure noise); false "
                                                 "weights every level 1, so x-hat-0 is also trained "
                                                 "as a classifier of the next token from the context "
                                                 "alone (at pure noise, teacher forcing's task)")
    decode_level: int = param(0, help="real level r at which tokens are read out of x-hat-0 (the "
                                      "last step jumps r -> clean); 0 denoises to the end as the "
                                      "official code. Needs sampling_timesteps <= T - r")
    clip_x0: bool = param(True, help="scale the predicted x0 into the ball of radius sqrt(D) that "
                                     "holds every clean embedding (DDPM's clip_denoised; keeps "
                                     "pred_noise's x0 = (x - sqrt(1-a) eps)/sqrt(a) finite at pure "
                                     "noise); false = the official code")
    bound_timesteps: int = param(0, help="S_b: levels of the sampler the likelihood bound "
                                         "describes (0: sampling_timesteps); ancestral steps (DDPM "
                                         "if S_b = T, else DDIM with eta = 1), decoding at real "
                                         "level decode_level (S_b = T - decode_level) or coarser")
    round_clean: bool = param(True, help="when a token becomes clean while sampling, replace its "
                                         "vector by its decoded token's embedding (false keeps "
                                         "the continuous prediction, as the official code)")

    def __post_init__(self):
        T, S = self.timesteps, self.sampling_timesteps
        check(isinstance(T, int) and T >= 1, "process.timesteps", f"must be an integer >= 1, got {T!r}")
        r = self.decode_level
        check(isinstance(r, int) and 0 <= r < T, "process.decode_level",
              f"must be an integer in 0..timesteps-1={T - 1}, got {r!r}")
        check(isinstance(S, int) and 1 <= S <= T - r, "process.sampling_timesteps",
              f"must satisfy 1 <= sampling_timesteps <= timesteps - decode_level = {T - r}, got {S!r}")
        check(self.beta_schedule != "linear" or T > 20, "process.beta_schedule",
              f"the linear schedule's last beta is 20/T = {20 / T:.3g}, which needs timesteps > 20; "
              "use cosine or sigmoid for fewer steps")
        check(0.0 <= self.schedule_fraction <= 1.0, "process.schedule_fraction",
              f"must be in [0, 1], got {self.schedule_fraction}")
        check(self.snr_clip > 0, "process.snr_clip", f"must be > 0, got {self.snr_clip}")
        check(self.snr_shift > 0, "process.snr_shift", f"must be > 0, got {self.snr_shift}")
        check(self.input_scale > 0, "process.input_scale", f"must be > 0, got {self.input_scale}")
        check(0.0 <= self.cum_snr_decay <= 1.0, "process.cum_snr_decay",
              f"must be in [0, 1], got {self.cum_snr_decay}")
        check(self.clip_noise > 0, "process.clip_noise", f"must be > 0, got {self.clip_noise}")
        check(self.ddim_eta >= 0, "process.ddim_eta", f"must be >= 0, got {self.ddim_eta}")
        check(isinstance(self.stabilization_level, int) and 0 <= self.stabilization_level <= T,
              "process.stabilization_level",
              f"must be an integer in 0..timesteps={T}, got {self.stabilization_level!r}")
        check(self.uncertainty_scale >= 0, "process.uncertainty_scale",
              f"must be >= 0, got {self.uncertainty_scale}")
        check(isinstance(self.bound_timesteps, int) and 0 <= self.bound_timesteps <= T - r,
              "process.bound_timesteps", f"must be an integer in 0..timesteps - decode_level = "
              f"{T - r} (0: sampling_timesteps), got {self.bound_timesteps!r}")
        check(self.window >= 0, "process.window", f"must be >= 0, got {self.window}")
        check(self.rounding_weight >= 0, "process.rounding_weight",
              f"must be >= 0, got {self.rounding_weight}")
        check(self.head == "regression" or self.objective == "pred_x0", "process.head",
              f"the softmax head predicts x0 (softmax(logits)·e); it needs objective pred_x0, "
              f"got {self.objective!r}")


class ForcingProcess(Process):
    name = "forcing"
    config_cls = ForcingConfig
    #: the backbone ``build_network`` accepts (note 004: a causal nanoGPT-style GPT)
    required_backbone = "gpt"
    #: causal: a generated token never sees known text to its right.
    uses_right_context = False

    def __init__(self, cfg: ForcingConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.df = cfg.use_diffusion_forcing
        self.exact_likelihood = not self.df
        self.ar = AutoregressiveProcess(AutoregressiveConfig(), vocab_size)   # teacher forcing
        betas = shift_betas(beta_schedule(cfg.beta_schedule, cfg.timesteps), cfg.snr_shift)
        self.tables = GaussianTables(betas, cfg.snr_clip)
        self.diffusion = ForcingDiffusion(
            self.tables, objective=cfg.objective, clip_noise=cfg.clip_noise,
            cum_snr_decay=cfg.cum_snr_decay, fused_snr=cfg.fused_snr, ddim_eta=cfg.ddim_eta,
            stabilization_level=cfg.stabilization_level, sampling_timesteps=cfg.sampling_timesteps,
            decode_level=cfg.decode_level, clip_x0=cfg.clip_x0, head=cfg.head)
        self.sampler = ForcingSampler(self.diffusion, cfg.scheduling_matrix, cfg.uncertainty_scale,
                                      cfg.window, cfg.round_clean)

    # ---- sizes and network ---------------------------------------------------------------------------
    @property
    def model_vocab_size(self) -> int:
        """V + 1 in both modes (the AR BOS row), so wte has the same shape whichever is trained."""
        return self.ar.model_vocab_size

    @property
    def noise_token_id(self) -> int | None:
        return self.ar.noise_token_id if not self.df else None

    def build_network(self, model_cfg, max_seq_len: int) -> nn.Module:
        """TF: the AR network itself. DF: ``DiffusionForcingNet`` around a causal GPT whose output
        layer (out_dim = n_embd) is the DF head."""
        if not self.df:
            return self.ar.build_network(model_cfg, max_seq_len)
        from thunderdlm.models import build_model  # late import: models do not know processes

        if model_cfg.name != self.required_backbone:
            raise ConfigError(f"config field 'model.name': diffusion forcing runs on the causal "
                              f"GPT (note 004), got {model_cfg.name!r}; set model.name=gpt")
        D = model_cfg.n_embd
        if D < 4 or D % 2:
            raise ConfigError(f"config field 'model.n_embd': the sinusoidal level embedding needs "
                              f"an even width >= 4, got {D}")
        if model_cfg.tie_embeddings and D == self.model_vocab_size:
            raise ConfigError("config field 'model.tie_embeddings': with n_embd equal to the "
                              "vocabulary size the GPT would tie its D x D DF head to the token "
                              "table; set model.tie_embeddings=false (it has no effect in DF mode)")
        backbone = build_model(model_cfg, self.model_vocab_size, max_seq_len, out_dim=D)
        return DiffusionForcingNet(backbone, self.vocab_size, self.cfg.level_embedding,
                                   self.cfg.input_scale)

    # ---- training ------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, x0: torch.Tensor, valid: torch.Tensor | None = None) -> LossOutput:
        check_valid(x0, valid)
        if not self.df:
            return self.ar.loss(model, x0, valid)
        cfg, dif = self.cfg, self.diffusion
        B, L = x0.shape
        net = unwrap(model)
        with torch.no_grad():
            e = net.embed(x0)                                                   # (B, L, D) x0
        k = self.training_levels(B, L, x0.device)                               # (B, L), −1 clean
        eps = dif.noise(e.shape, e.device)                                      # clamped ε
        xk = dif.q_sample(e, k, eps)
        inp, fed = dif.network_input(xk, k, ddpm=self.sampling_is_ddpm)         # stabilization
        out, table = model(inp, fed, return_table=True, **pad_kwargs(valid))    # (B, L, D), (V, D)
        pred = dif.predictions(out, inp, fed, table)
        noisy = k >= 0                                                          # context: no loss
        if valid is not None:
            noisy = noisy & valid                                               # padding: no loss
        n = noisy.sum().clamp(min=1)
        w = torch.where(noisy, dif.loss_weights(k), 0.0).float()                # (B, L)
        err = ((pred.out - dif.target(e, k, eps)) ** 2).mean(-1)                # (B, L)
        mse = (torch.where(noisy, err, 0.0) * w).sum() / n
        ce = F.cross_entropy(pred.decoder_logits(table).transpose(1, 2), x0,
                             reduction="none")                                  # (B, L)
        if cfg.rounding_snr_weight:
            ce = ce * (self.tables.gather("clipped_snr", k, cfg.snr_clip) / cfg.snr_clip).float()
        rounding = torch.where(noisy, ce, 0.0).sum() / n
        loss = mse + cfg.rounding_weight * rounding
        return LossOutput(loss, {"mse": mse.item(), "round_ce": rounding.item()})

    @property
    def sampling_is_ddpm(self) -> bool:
        """The sampler's steps are DDPM's (one real level each), which decides how stabilization
        feeds clean context (noised, or scaled only)."""
        return self.cfg.sampling_timesteps == self.cfg.timesteps - self.cfg.decode_level

    def training_levels(self, B: int, L: int, device) -> torch.Tensor:
        """(B, L) real noise levels: i.i.d. U{0..T−1} per token ("random_all", the official
        code); the first round(schedule_fraction·B) rows instead hold a state the sampler visits
        (``schedules.sampler_states``), with −1 for clean context."""
        cfg = self.cfg
        k = torch.randint(0, cfg.timesteps, (B, L), device=device)               # random_all
        n_sched = int(round(cfg.schedule_fraction * B))
        if n_sched:
            k[:n_sched] = sampler_states(cfg.scheduling_matrix, n_sched, L, cfg.sampling_timesteps,
                                         cfg.uncertainty_scale, self.sampler.real).to(device)
        return k

    # ---- likelihood bound ----------------------------------------------------------------------------
    @property
    def bound_timesteps(self) -> int:
        return self.cfg.bound_timesteps or self.cfg.sampling_timesteps

    @torch.no_grad()
    def nelbo(self, model: nn.Module, x0: torch.Tensor,
              generator: torch.Generator | None = None,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        check_valid(x0, valid)
        if not self.df:
            return self.ar.nelbo(model, x0, valid=valid)
        net, t, dif = unwrap(model), self.tables, self.diffusion
        B, L = x0.shape
        T, Sb = self.cfg.timesteps, self.bound_timesteps
        r = self.cfg.decode_level
        real = real_levels(Sb, T, x0.device, r)                                 # (Sb+1,)
        M = scheduling_matrix(self.cfg.scheduling_matrix, L, Sb, self.cfg.uncertainty_scale)
        M = M.to(x0.device)
        R = M.shape[0] - 1
        m = torch.randint(0, R, (B,), device=x0.device, generator=generator)
        k_from, k_to = real[M[m]], real[M[m + 1]]                               # (B, L) real levels
        e = net.embed(x0)                                                       # (B, L, D)
        eps = torch.randn(e.shape, device=e.device, generator=generator)        # unclamped q
        state = torch.where(k_from.unsqueeze(-1) >= 0, dif.q_sample(e, k_from, eps), e)
        inp, fed = dif.network_input(state, k_from, ddpm=Sb == T - r, generator=generator)
        table = net.token_table()
        pred = dif.predictions(net(inp, fed, **pad_kwargs(valid)), inp, fed, table)
        err = ((e - pred.x0) ** 2).sum(-1).double()                             # (B, L)
        # KL(q(x_k'|x_k, x0) ‖ p_θ) with the ancestral variance = ½(snr_k' − snr_k)·‖x0 − x̂0‖²
        gain = (t.gather("snr", k_to.clamp(min=0), 0.0) - t.gather("snr", k_from.clamp(min=0), 0.0))
        kl = 0.5 * gain * err
        dec = F.cross_entropy(pred.decoder_logits(table).transpose(1, 2), x0,
                              reduction="none").double()                        # (B, L)
        moving = k_to < k_from
        term = torch.where(moving & (k_to >= 0), kl, torch.zeros_like(kl))
        term = term + torch.where(moving & (k_to < 0), dec, torch.zeros_like(dec))
        ab = t.gather("alphas_cumprod", torch.full_like(x0, T - 1), 1.0)        # (B, L) ᾱ_{T−1}
        D = e.shape[-1]
        prior = 0.5 * (ab * (e.double() ** 2).sum(-1) - D * (ab + torch.log1p(-ab)))
        if valid is None:
            return ((R * term.sum(1) + prior.sum(1)) / L).float()
        v = valid.double()                                                      # padding: no term
        return ((R * (term * v).sum(1) + (prior * v).sum(1)) / v.sum(1)).float()

    # ---- sampling ------------------------------------------------------------------------------------
    def prior(self, shape, device, generator=None) -> torch.Tensor:
        if not self.df:
            return self.ar.prior(shape, device, generator)
        # placeholders only: the state lives in continuous space (ctx.cache) until decoded
        return rng.randint(0, self.vocab_size, shape, generator, device=device)

    def is_noisy(self, x: torch.Tensor) -> torch.Tensor:
        return self.ar.is_noisy(x) if not self.df else super().is_noisy(x)

    def step(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> StepOutput:
        """One loop step = one jump along the block's scheduling matrix (see ``sampler.py``)."""
        if not self.df:
            return self.ar.step(model, x, ctx)
        cols = ctx.editable.any(dim=0).nonzero().flatten()
        if cols.numel() == 0:
            return StepOutput(x, x)
        net = unwrap(model)
        w = ctx.cache.get("forcing")
        if w is None:
            lo, hi = int(cols[0]), int(cols[-1]) + 1
            w = self.sampler.open(net, x, ctx.editable[:, lo:hi], None, lo, hi, ctx.generator)
            ctx.cache["forcing"] = w
        row = budget_row(ctx.s, w.height - 1)
        if row > w.row:
            ctx.nfe += self.sampler.advance(net, w, row, ctx.generator, ctx.options)
        x = x.clone()
        x[:, w.lo:w.hi] = torch.where(w.gen, w.tokens, x[:, w.lo:w.hi])
        return StepOutput(x, x)

    def finalize(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self.ar.finalize(model, x, ctx) if not self.df else x

    @torch.no_grad()
    def generate_df(self, model: nn.Module, prompt: torch.Tensor, n_new: int, *,
                    chunk_size: int = 0, generator: torch.Generator | None = None,
                    options=None) -> tuple[torch.Tensor, int]:
        """Prompted continuation of any length (the official ``validation_step``): see
        ``ForcingSampler.generate``. Returns (tokens (B, P + n_new), network evaluations)."""
        if not self.df:
            raise ConfigError("config field 'process.use_diffusion_forcing': generate_df needs "
                              "diffusion forcing; teacher forcing samples through the loop")
        return self.sampler.generate(unwrap(model), prompt, n_new, chunk_size=chunk_size,
                                     generator=generator, options=options)
