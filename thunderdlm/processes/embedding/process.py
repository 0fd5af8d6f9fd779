"""Continuous embedding diffusion: Gaussian diffusion over token latents (Diffusion-LM, Plaid,
and the user's notes 000 / 001).

Notation map (SPEC.md §5; Li et al. 2022 "Diffusion-LM"; Gulrajani & Hashimoto 2023 "Plaid";
Kingma et al. 2021 "VDM"):

    w           clean tokens (B, L)
    e_v         the latent of token v (V, d): the embedding bridge LN₀(P·E_v), or the raw E_v
    x = e_w     clean latents (B, L, d)
    z_t         √ᾱ_t x + √(1 − ᾱ_t) ε, the noisy latents; t ∈ [0, 1] (``schedules.py``)
    f_θ         the network (``network.py``); by ``parameterization`` its output is
                x̂0 (default, note 001), ε̂ (note 000) or v̂ = √ᾱ ε̂ − √(1 − ᾱ) x̂0; with the ``softmax``
                head x̂0 = softmax(logits)·e (Plaid's categorical reparameterisation)

Training loss (each term logged on its own, each with a weight in the config):

    mse       mean over positions and dims of ‖target − f_θ‖², target ∈ {x, ε, v} (``diffusion_loss``);
              ``vlb`` instead trains on the bound's diffusion term below (Plaid)
    anchor    note 001's "semantic anchor": ‖x̂0 − x‖² or 1 − cos(x̂0, x) against the clean latents, or,
              with ``anchor_target: embedding``, between an inverse projection U·x̂0 and the source
              embeddings E_w (the pretrained model's own space)
    rounding  cross-entropy of the rounding logits of x̂0 against w: −‖x̂0 − e_v‖²/τ (``l2``),
              cos(x̂0, e_v)/τ (``cosine``), e_v·x̂0 + b_v (``dot``, Diffusion-LM's tied lm_head), or the
              softmax head's own logits. It keeps the latent space decodable: without it, an embedding
              learned through the MSE alone collapses (every e_v alike, the MSE trivially small).

Likelihood (``nelbo``): the VDM / Plaid variational bound per token, valid for any network,
parameterisation and training loss (the encoder w ↦ x is deterministic, so q(z_0..1 | w) is Gaussian):

    −log p(w) ≤ E[−log p(w | z_0)]                       decoder: p(w_i | z_0) ∝ N(z_0,i; √ᾱ_0 e_v, (1 − ᾱ_0) I)
               + KL(q(z_1 | x) ‖ N(0, I))                  prior
               + E_t[ −½ SNR'(t) ‖x − x̂0(z_t)‖² ]         diffusion, continuous time
                 (discrete time, T steps: T · E_k[ ½ (SNR(t_{k−1}) − SNR(t_k)) ‖x − x̂0(z_{t_k})‖² ])

Sampling (``step``, the "crystallisation" of note 000): z_1 ~ N(0, I); each step from t to s predicts
x̂0 (optionally snapped to the nearest vocabulary latent, Diffusion-LM's clamping, for t ≤
``clamp_below``), ε̂ = (z_t − √ᾱ_t x̂0)/√(1 − ᾱ_t), then

    DDIM:  z_s = √ᾱ_s x̂0 + √(1 − ᾱ_s − σ_η²) ε̂ + σ_η ξ,   σ_η = η √((1 − ᾱ_t/ᾱ_s)(1 − ᾱ_s)/(1 − ᾱ_t))
    DDPM:  z_s = μ̃(x̂0, z_t) + √β̃ ξ  (the Gaussian posterior q(z_s | z_t, x̂0); equal to DDIM at η = 1)

and the last step (s = 0) returns x̂0 itself (SPEC's k' = −1: clean, ᾱ = 1). Tokens are the rounding of
x̂0 at every step (the live display) and of the final latents at the end. Known text (prompt, infill)
is clamped: before every network call its latents are replaced by a fresh draw of q(z_t | e_w).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.config import check, param
from thunderdlm import rng
from thunderdlm.errors import ConfigError
from thunderdlm.processes.base import (LossOutput, Process, StepContext, StepOutput, check_valid,
                                        pad_kwargs, real_mean, unwrap)
from thunderdlm.processes.config import ProcessConfig
from thunderdlm.processes.embedding.network import EmbeddingDenoiser
from thunderdlm.processes.embedding.schedules import (GAUSSIAN_SCHEDULES, build_gaussian_schedule,
                                                       token_evidence)
from thunderdlm.processes.discrete.masked import stratified_times


def sq_dist(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """‖x_{b,i} − e_v‖²: x (B, L, d), e (V, d) -> (B, L, V)."""
    return torch.cdist(x, e.expand(x.shape[0], *e.shape)).square()



def _real_sum(per_pos: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, L) -> (B,): the sum over the real positions (all when ``valid`` is None)."""
    return per_pos.sum(dim=1) if valid is None else (per_pos * valid.to(per_pos.dtype)).sum(dim=1)

@dataclass
class EmbeddingConfig(ProcessConfig):
    name: str = param("embedding", help="continuous embedding diffusion (Diffusion-LM / Plaid, note 001's bridge)")
    # ---- the latent space ----
    latent_dim: int = param(16, help="width d of the diffusion latents (ignored without the bridge: "
                                     "the raw embeddings have the model's width)")
    bridge: bool = param(True, help="latents = parameter-free LayerNorm(P · E_w) (note 001); false diffuses "
                                    "the raw token embeddings E_w (note 000)")
    freeze_embeddings: bool = param(False, help="keep the source token embeddings E fixed")
    # ---- the Gaussian process ----
    schedule: str = param("cosine", help="ᾱ(t) shape", choices=tuple(GAUSSIAN_SCHEDULES))
    time: str = param("continuous", help="continuous t ∈ (0, 1], or `timesteps` discrete steps",
                      choices=("continuous", "discrete"))
    timesteps: int = param(1000, help="T for time=discrete")
    parameterization: str = param("x0", help="what the network predicts", choices=("x0", "eps", "v"))
    head: str = param("regression", choices=("regression", "softmax"),
                      help="regression: the network outputs d numbers; softmax (Plaid): it outputs vocabulary "
                           "logits and x̂0 = softmax(logits)·e (needs parameterization x0)")
    output_prior: bool = param(True, help="softmax head: add the Gaussian log-likelihood of z_t under each "
                                          "token to the logits (Plaid's output prior)")
    input_scale: float = param(1.0, help="scale c of the projected latents in the backbone's residual "
                                         "stream, h0 = c·W_in·z_t: W_in·z_t has a per-coordinate std of "
                                         "~0.6, about 10x a DDiT's token embeddings (kaiming init), which "
                                         "drowns the blocks' zero-initialised gated outputs at the start")
    input_posterior: bool = param(False, help="also feed the network each position's token posterior "
                                              "given its own z_t, softmax(prior logits)·E: the noisy "
                                              "neighbours arrive as (soft) tokens of the token table, "
                                              "as in masked diffusion, instead of raw latents only")
    self_conditioning: bool = param(False, help="feed the previous x̂0 back as input (Plaid / CDCD)")
    self_cond_prob: float = param(0.5, help="fraction of training rows that get a self-conditioning pass")
    train_t_min: float = param(0.0, help="training draws t in [train_t_min, 1] (the bound always integrates "
                                         "over (0, 1]); skips the low-noise range that the output prior "
                                         "already solves")
    t_sampling: str = param("uniform", choices=("uniform", "importance"),
                            help="how training and the bound draw t: uniform (stratified), or importance: "
                                 "∝ √E[h(t)²] of the bound's integrand from its own history, weighted "
                                 "1/p(t) (Improved DDPM's loss-second-moment sampler; time_importance.py)")
    t_bins: int = param(64, help="t_sampling=importance: bins of (0, 1] for the history (time=discrete: "
                                 "the T steps themselves)")
    # ---- the loss ----
    diffusion_loss: str = param("simple", choices=("simple", "x0", "eps", "v", "vlb"),
                                help="simple: MSE on the parameterisation's own target; x0 / eps / v: MSE "
                                     "on that target; vlb: the bound's SNR-weighted diffusion term (Plaid)")
    mse_weight: float = param(1.0, help="weight of the diffusion loss")
    anchor_weight: float = param(0.0, help="weight of note 001's semantic anchor loss")
    anchor_target: str = param("latent", choices=("latent", "embedding"),
                               help="anchor x̂0 to the clean latents, or U·x̂0 to the source embeddings E_w")
    anchor_metric: str = param("l2", choices=("l2", "cosine"), help="anchor distance")
    rounding_weight: float = param(1.0, help="weight of the rounding cross-entropy of x̂0")
    rounding_metric: str = param("l2", choices=("l2", "cosine", "dot"),
                                 help="rounding logits: −‖x̂0 − e_v‖²/τ, cos(x̂0, e_v)/τ, or e_v·x̂0 + b_v "
                                      "(ignored by the softmax head, whose logits are its own)")
    rounding_temperature: float = param(1.0, help="τ of the l2 / cosine rounding logits")
    # ---- sampling ----
    sampler: str = param("ddim", choices=("ddim", "ddpm"), help="reverse update")
    ddim_eta: float = param(0.0, help="DDIM η: 0 deterministic, 1 the DDPM posterior variance")
    clamp_below: float = param(0.0, help="snap x̂0 to its nearest vocabulary latent at steps with t ≤ this "
                                         "(Diffusion-LM's clamping; 0 never, 1 every step)")
    final_rounding: str = param("logits", choices=("logits", "l2", "cosine"),
                                help="tokens from latents: argmax of the rounding logits, or the L2 / "
                                     "cosine nearest vocabulary latent")

    def __post_init__(self):
        check(self.latent_dim >= 1, "process.latent_dim", f"must be ≥ 1, got {self.latent_dim}")
        check(self.timesteps >= 1, "process.timesteps", f"must be ≥ 1, got {self.timesteps}")
        check(0.0 <= self.self_cond_prob <= 1.0, "process.self_cond_prob",
              f"must be in [0, 1], got {self.self_cond_prob}")
        check(0.0 <= self.train_t_min < 1.0, "process.train_t_min", f"must be in [0, 1), got {self.train_t_min}")
        check(self.t_bins >= 1, "process.t_bins", f"must be ≥ 1, got {self.t_bins}")
        check(self.input_scale > 0, "process.input_scale", f"must be > 0, got {self.input_scale}")
        check(self.t_sampling == "uniform" or self.train_t_min == 0.0, "process.train_t_min",
              "t_sampling=importance already moves the draws to where the bound's integrand is; "
              f"leave train_t_min at 0, got {self.train_t_min}")
        check(self.ddim_eta >= 0.0, "process.ddim_eta", f"must be ≥ 0, got {self.ddim_eta}")
        check(0.0 <= self.clamp_below <= 1.0, "process.clamp_below", f"must be in [0, 1], got {self.clamp_below}")
        check(self.rounding_temperature > 0, "process.rounding_temperature",
              f"must be > 0, got {self.rounding_temperature}")
        for f in ("mse_weight", "anchor_weight", "rounding_weight"):
            check(getattr(self, f) >= 0.0, f"process.{f}", f"must be ≥ 0, got {getattr(self, f)}")
        check(self.head == "regression" or self.parameterization == "x0", "process.head",
              f"the softmax head predicts x̂0; it needs parameterization x0, got {self.parameterization!r}")
        # ε̂ (or v̂) from a predicted x̂0 is (z_t − √ᾱ x̂0)/√(1 − ᾱ): the error is multiplied by
        # 1/σ_t → ∞ as t → 0, so an ε- or v-target loss on an x0 network is ill-posed
        check(not (self.parameterization == "x0" and self.diffusion_loss in ("eps", "v")),
              "process.diffusion_loss",
              f"{self.diffusion_loss!r} needs ε̂, which an x0 parameterisation only gives by dividing by "
              "σ_t (unbounded near t = 0); use diffusion_loss simple / x0 / vlb, or parameterization eps / v")


class EmbeddingProcess(Process):
    name = "embedding"
    config_cls = EmbeddingConfig

    def __init__(self, cfg: EmbeddingConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.schedule = build_gaussian_schedule(cfg.schedule)

    # ---- the network ---------------------------------------------------------------------------
    def build_network(self, model_cfg, max_seq_len: int) -> EmbeddingDenoiser:
        from thunderdlm.models import build_model, model_width

        if not model_cfg.time_conditioning:
            raise ConfigError("config field 'model.time_conditioning': the embedding process needs a "
                              "noise-level-aware network; set model.time_conditioning=true")
        cfg = self.cfg
        D = model_width(model_cfg)
        d = cfg.latent_dim if cfg.bridge else D
        out = self.vocab_size if cfg.head == "softmax" else d
        backbone = build_model(model_cfg, self.vocab_size, max_seq_len, out_dim=out)
        anchor_dim = D if cfg.anchor_weight > 0 and cfg.anchor_target == "embedding" else None
        bins = None
        if cfg.t_sampling == "importance":
            bins = cfg.timesteps if cfg.time == "discrete" else cfg.t_bins
        return EmbeddingDenoiser(backbone, d, bridge=cfg.bridge, head=cfg.head,
                                 freeze_embeddings=cfg.freeze_embeddings, anchor_dim=anchor_dim,
                                 rounding_bias=cfg.head == "regression" and cfg.rounding_metric == "dot",
                                 time_bins=bins, input_scale=cfg.input_scale)

    # ---- schedule helpers ----------------------------------------------------------------------
    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ(t) broadcastable over (B, L, d): t (B,) -> (B, 1, 1)."""
        return self.schedule.alpha_bar(t.double()).float()[:, None, None]

    def _sample_t(self, net: EmbeddingDenoiser, n: int, device, generator=None,
                  t_min: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Training / bound times (n,) and their weights 1/p(t) (n,): stratified in (t_min, 1] (weight
        1), or through the importance sampler's inverse CDF; time=discrete snaps to k/T, k ∈ 1..T."""
        u = stratified_times(n, device, generator, True)
        sampler = unwrap(net).time_sampler
        if sampler is None:
            t, weight = t_min + (1.0 - t_min) * u, torch.ones_like(u)
        else:
            t, weight = (v.to(u.dtype) for v in sampler.sample(u))
        if self.cfg.time == "discrete":   # bin k of the sampler is ((k − 1)/T, k/T]: snapping keeps p
            T = self.cfg.timesteps
            t = torch.ceil(t * T).clamp(1, T) / T
        return t, weight

    def noisy(self, x: torch.Tensor, t: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """z_t = √ᾱ x + √(1 − ᾱ) ε and ε; x (B, L, d), t (B,)."""
        eps = rng.randn(x.shape, generator, device=x.device, dtype=x.dtype)
        a = self._alpha_bar(t)
        return a.sqrt() * x + (1 - a).sqrt() * eps, eps

    # ---- parameterisation ----------------------------------------------------------------------
    def predict(self, net: EmbeddingDenoiser, z: torch.Tensor, t: torch.Tensor,
                x_sc: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(raw output, x̂0, rounding logits) at z (B, L, d), t (B,); ``valid`` (B, L): real tokens."""
        e = unwrap(net).latents()                                          # (V, d)
        a = self._alpha_bar(t)
        cfg = self.cfg
        prior = self.prior_logits(z, a, e) if cfg.input_posterior or cfg.output_prior else None
        token_probs = torch.softmax(prior, dim=-1) if cfg.input_posterior else None
        out = net(z, t, x_sc, token_probs, **pad_kwargs(valid))   # through a DDP wrapper, if any
        if cfg.head == "softmax":
            if cfg.output_prior:
                # Plaid's output prior: the network learns the correction to the per-position
                # posterior (which is exact on its own as t → 0)
                out = out + prior
            x0_hat = torch.softmax(out, dim=-1) @ e                            # E_p[e] (B, L, d)
            return out, x0_hat, out
        if self.cfg.parameterization == "x0":
            x0_hat = out
        elif self.cfg.parameterization == "eps":
            x0_hat = (z - (1 - a).sqrt() * out) / a.sqrt()
        else:  # v
            x0_hat = a.sqrt() * z - (1 - a).sqrt() * out
        return out, x0_hat, self.rounding_logits(net, x0_hat, e)

    @staticmethod
    def prior_logits(z: torch.Tensor, a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """(B, L, V): the exact posterior logits of each position's token given its own z_t alone
        (``schedules.token_evidence``); z (B, L, d), a (B, 1, 1)."""
        return token_evidence(z, a, e)

    def rounding_logits(self, net: EmbeddingDenoiser, x0_hat: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """(B, L, V) logits of the tokens given latents x0_hat (B, L, d)."""
        metric, tau = self.cfg.rounding_metric, self.cfg.rounding_temperature
        if metric == "l2":
            return -sq_dist(x0_hat, e) / tau
        if metric == "cosine":
            return F.normalize(x0_hat, dim=-1) @ F.normalize(e, dim=-1).T / tau
        return x0_hat @ e.T + unwrap(net).rounding_bias                         # dot (Diffusion-LM)

    def self_condition(self, net: EmbeddingDenoiser, z: torch.Tensor, t: torch.Tensor,
                       rows: torch.Tensor | None = None,
                       valid: torch.Tensor | None = None) -> torch.Tensor | None:
        """Plaid's first pass: x̂0 from x_sc = 0, without gradient, on ``rows`` (B,) bool (all if None)."""
        if not self.cfg.self_conditioning:
            return None
        with torch.no_grad():
            x_sc = self.predict(net, z, t, valid=valid)[1].detach()
        if rows is not None:
            x_sc = torch.where(rows[:, None, None], x_sc, torch.zeros_like(x_sc))
        return x_sc

    # ---- loss and bound ------------------------------------------------------------------------
    def diffusion_term(self, x: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
        """The bound's diffusion term per sequence (B,), summed over (real) positions and dims."""
        err = _real_sum((x - x0_hat).float().square().sum(dim=-1), valid)      # (B,)
        td = t.double()
        if self.cfg.time == "continuous":
            w = -0.5 * self.schedule.dsnr(td)                                   # −½ SNR'(t) ≥ 0
        else:
            T = self.cfg.timesteps
            w = 0.5 * T * (self.schedule.snr(td - 1.0 / T) - self.schedule.snr(td))
        return w.float() * err

    def prior_term(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """KL(N(√ᾱ_1 x, 1 − ᾱ_1) ‖ N(0, 1)) summed over (real) positions and dims: (B,)."""
        a1 = float(self.schedule.alpha_bar(torch.tensor(1.0, dtype=torch.float64)))
        kl = 0.5 * (a1 * x.float().square() - a1 - torch.log1p(torch.tensor(-a1)))
        return _real_sum(kl.sum(dim=-1), valid)

    def decoder_term(self, x: torch.Tensor, w: torch.Tensor, e: torch.Tensor, generator=None,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
        """−log p(w | z_0) with z_0 ~ q(z_0 | x) and the Gaussian decoder, summed over (real)
        positions: (B,)."""
        a0 = float(self.schedule.alpha_bar(torch.tensor(0.0, dtype=torch.float64)))
        z0 = a0 ** 0.5 * x + (1 - a0) ** 0.5 * torch.randn(x.shape, device=x.device, generator=generator)
        logits = -sq_dist(z0.float(), a0 ** 0.5 * e.float()) / (2 * (1 - a0))                                           # (B, L, V)
        return _real_sum(F.cross_entropy(logits.transpose(1, 2), w, reduction="none"), valid)

    def loss(self, model: nn.Module, x0: torch.Tensor, valid: torch.Tensor | None = None) -> LossOutput:
        check_valid(x0, valid)
        cfg, net = self.cfg, model
        B, L = x0.shape
        n = L if valid is None else valid.sum(dim=1)                            # real tokens (B,)
        x = unwrap(net).clean_latents(x0)                                       # (B, L, d)
        t, weight = self._sample_t(net, B, x0.device, t_min=cfg.train_t_min)
        z, eps = self.noisy(x, t)
        rows = torch.rand(B, device=x0.device) < cfg.self_cond_prob
        out, x0_hat, logits = self.predict(net, z, t, self.self_condition(net, z, t, rows, valid), valid)
        metrics: dict[str, float] = {}
        total = torch.zeros((), device=x0.device)
        h = self.diffusion_term(x, x0_hat, t, valid) / n                        # (B,) per real token
        sampler = unwrap(net).time_sampler
        if sampler is not None:
            sampler.update(t, h)
        if cfg.mse_weight > 0:
            # the diffusion loss is the one term that estimates an integral over t: weight 1/p(t)
            # keeps it unbiased under importance sampling (the other terms simply see the proposal)
            if cfg.diffusion_loss == "vlb":
                mse = (weight * h).mean()
            else:
                kind = cfg.parameterization if cfg.diffusion_loss == "simple" else cfg.diffusion_loss
                err = (self._as(kind, out, x0_hat, z, t) - self._target(kind, x, eps, t)).square()
                mse = (weight * real_mean(err.mean(dim=-1), valid)).mean()
            total = total + cfg.mse_weight * mse
            metrics["mse"] = mse.item()
        if cfg.anchor_weight > 0:
            anchor = self.anchor_loss(net, x0_hat, x, x0, valid)
            total = total + cfg.anchor_weight * anchor
            metrics["anchor"] = anchor.item()
        if cfg.rounding_weight > 0:
            ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (B, L)
            ce = ce.mean() if valid is None else ce[valid].mean()
            total = total + cfg.rounding_weight * ce
            metrics["round_ce"] = ce.item()
        metrics["latent_rms"] = x.detach().square().mean().sqrt().item()
        return LossOutput(total, metrics)

    def _as(self, kind: str, out, x0_hat, z, t) -> torch.Tensor:
        """The network's prediction expressed as ``kind`` (x0 / eps / v)."""
        if kind == "x0":
            return x0_hat
        if kind == self.cfg.parameterization:
            return out
        a = self._alpha_bar(t)
        # here the parameterisation is eps or v (x0 networks cannot ask for eps / v: __post_init__)
        eps_hat = out if self.cfg.parameterization == "eps" else (1 - a).sqrt() * z + a.sqrt() * out
        if kind == "eps":
            return eps_hat
        return a.sqrt() * eps_hat - (1 - a).sqrt() * x0_hat

    def _target(self, kind: str, x, eps, t) -> torch.Tensor:
        if kind == "x0":
            return x
        if kind == "eps":
            return eps
        a = self._alpha_bar(t)
        return a.sqrt() * eps - (1 - a).sqrt() * x                             # v

    def anchor_loss(self, net: EmbeddingDenoiser, x0_hat: torch.Tensor, x: torch.Tensor,
                    w: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Note 001's anchor: distance of the denoised latents to the clean ones (or of U·x̂0 to E_w)."""
        if self.cfg.anchor_target == "embedding":
            core = unwrap(net)
            pred, anchor = core.anchor_proj(x0_hat), F.embedding(w, core.source).detach()
        else:
            pred, anchor = x0_hat, x.detach()
        if self.cfg.anchor_metric == "cosine":
            dist = 1.0 - F.cosine_similarity(pred, anchor, dim=-1)                # (B, L)
        else:
            dist = (pred - anchor).square().sum(dim=-1)
        return dist.mean() if valid is None else dist[valid].mean()

    def nelbo(self, model: nn.Module, x0: torch.Tensor, generator=None,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        check_valid(x0, valid)
        net = model
        n = x0.shape[1] if valid is None else valid.sum(dim=1)                  # real tokens (B,)
        x = net.clean_latents(x0)
        e = net.latents()
        t, weight = self._sample_t(net, x0.shape[0], x0.device, generator)
        z, _ = self.noisy(x, t, generator)
        x0_hat = self.predict(net, z, t, self.self_condition(net, z, t, valid=valid), valid)[1]
        total = (self.decoder_term(x, x0, e, generator, valid) + self.prior_term(x, valid)
                 + weight * self.diffusion_term(x, x0_hat, t, valid))
        return total / n

    # ---- sampling ------------------------------------------------------------------------------
    def prior(self, shape, device, generator=None) -> torch.Tensor:
        # the state is continuous (kept by ``step``); the token placeholder is never read
        return torch.zeros(shape, dtype=torch.long, device=device)

    def round(self, net: EmbeddingDenoiser, latents: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, L) from latents (B, L, d) by ``final_rounding``."""
        e = net.latents()
        rule = self.cfg.final_rounding
        if rule == "l2":
            return sq_dist(latents, e).argmin(-1)
        if rule == "cosine":
            return (F.normalize(latents, dim=-1) @ F.normalize(e, dim=-1).T).argmax(-1)
        if logits is None:
            logits = self.rounding_logits(net, latents, e) if self.cfg.head == "regression" else None
            if logits is None:  # softmax head: its logits belong to x̂0, not to arbitrary latents
                return sq_dist(latents, e).argmin(-1)
        return logits.argmax(-1)

    def step(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> StepOutput:
        net, cfg = model, self.cfg
        B, L = x.shape
        dev = x.device
        e = net.latents()
        d = e.shape[1]
        if "z" not in ctx.cache:
            ctx.cache["z"] = rng.randn((B, L, d), ctx.generator, device=dev)
        z = ctx.cache["z"]
        t = torch.full((B,), ctx.t, device=dev)
        if cfg.time == "discrete":
            T = cfg.timesteps
            t = torch.round(t * T).clamp(1, T) / T
        # known text: a fresh draw of q(z_t | e_w); later blocks: pure noise
        known = ~ctx.editable if ctx.pending is None else ~(ctx.editable | ctx.pending)
        zk, _ = self.noisy(F.embedding(x, e), t, ctx.generator)
        z = torch.where(known[..., None], zk, z)
        if ctx.pending is not None:
            noise = rng.randn(z.shape, ctx.generator, device=dev)
            z = torch.where(ctx.pending[..., None], noise, z)
        x_sc = ctx.cache.get("x_sc") if cfg.self_conditioning else None
        _, x0_hat, logits = self.predict(net, z, t, x_sc)
        ctx.nfe += 1
        temp = ctx.options.temperature
        if cfg.head == "softmax" and temp != 1.0:
            # a sharper (T < 1) posterior over tokens gives a less averaged x̂0 (Plaid's score
            # temperature plays the same role); T = 0 is the one-hot argmax, i.e. clamping
            probs = F.one_hot(logits.argmax(-1), e.shape[0]).float() if temp == 0 else \
                torch.softmax(logits / temp, dim=-1)
            x0_hat = probs @ e
        tokens = self.round(net, x0_hat, logits)
        if ctx.t <= cfg.clamp_below:                                            # Diffusion-LM clamping
            x0_hat = F.embedding(tokens, e)
        ctx.cache["x_sc"] = x0_hat
        if ctx.s <= 0.0:
            z_s = x0_hat                                                        # the clean end point
        else:
            s = torch.full((B,), ctx.s, device=dev)
            if cfg.time == "discrete":
                s = torch.round(s * cfg.timesteps) / cfg.timesteps
            z_s = self.reverse_update(z, x0_hat, t, s, ctx.generator)
        ctx.cache["z"] = z_s
        # the tokens of x̂0 are both the display and, at s = 0 (z_0 = x̂0), the result
        return StepOutput(tokens, tokens)

    def reverse_update(self, z: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                       generator=None) -> torch.Tensor:
        """One DDIM (η) or DDPM step from z_t to z_s given x̂0 (all (B, L, d); t, s (B,))."""
        a_t, a_s = self._alpha_bar(t), self._alpha_bar(s)
        noise = rng.randn(z.shape, generator, device=z.device)
        if self.cfg.sampler == "ddpm":
            beta = 1 - a_t / a_s                                                # 1 − α²_{t|s}
            mean = (a_s.sqrt() * beta / (1 - a_t)) * x0_hat \
                + ((a_t / a_s).sqrt() * (1 - a_s) / (1 - a_t)) * z
            var = beta * (1 - a_s) / (1 - a_t)
            return mean + var.sqrt() * noise
        eps_hat = (z - a_t.sqrt() * x0_hat) / (1 - a_t).sqrt()
        sigma = self.cfg.ddim_eta * ((1 - a_t / a_s) * (1 - a_s) / (1 - a_t)).clamp(min=0).sqrt()
        return a_s.sqrt() * x0_hat + (1 - a_s - sigma ** 2).clamp(min=0).sqrt() * eps_hat + sigma * noise
