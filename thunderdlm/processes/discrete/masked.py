"""Masked (absorbing-state) discrete diffusion: MDLM's SUBS parameterisation and LLaDA's sampler.

Notation map (SPEC.md §1–2; MDLM, Sahoo et al. 2024; LLaDA, Nie et al. 2025):

    x0          clean tokens (B, L)
    M           the mask token, ``mask_id = V_tok`` (the vocabulary grows by one)
    α_t         keep probability of the schedule, m(t) = 1 − α_t the mask probability
    x_t         x0 with each token independently replaced by M with probability m(t)
    p_θ(·|x_t)  the network's SUBS distribution over clean tokens at every position

SUBS (§1.3): the mask logit is removed ("zero masking probability") and a visible token is copied
with probability 1 ("carry-over unmasking"). Hence only masked positions contribute to the loss:

    NELBO(x0) = E_t E_{x_t} [ w(t) · Σ_{i: x_t^i = M} −log p_θ(x0^i | x_t) ] / L ,  w(t) = −α'_t/(1−α_t)

which is exactly 1/t for the log-linear schedule. With α_1 = 0 (ε = 0, our default) the all-mask
prior is exact and the expectation is a true upper bound on −log p(x0)/L.

Reverse step from t to s < t (MDLM ancestral, §1.7): each masked position is unmasked with
probability (α_s − α_t)/(1 − α_t) — (t − s)/t for log-linear — to a token drawn from p_θ; visible
tokens never change. LLaDA's samplers (§2.3) instead unmask a fixed number of positions per step,
chosen by the highest confidence p_θ(x̂0) ("low_confidence") or at random ("random").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.config import check, param
from thunderdlm.processes.base import (LossOutput, Process, StepContext, StepOutput, check_valid,
                                        pad_kwargs)
from thunderdlm.processes.config import ProcessConfig
from thunderdlm.processes.discrete.schedules import SCHEDULES, build_schedule
from thunderdlm.categorical import draw_tokens
from thunderdlm import rng
from thunderdlm.processes.discrete.commit import select_confident

NEG_INF = -1e6  # SUBS uses a large finite negative number rather than −inf (keeps softmax finite)


@dataclass
class MaskedConfig(ProcessConfig):
    name: str = param("masked", help="masked (absorbing) diffusion, MDLM SUBS / LLaDA")
    schedule: str = param("loglinear", help="noise schedule α_t", choices=tuple(SCHEDULES))
    eps: float = param(0.0, help="α_1 = eps; 0 makes the all-mask prior exact (MDLM uses 1e-3)")
    time_conditioning: bool = param(False, help="feed σ(t) to the network (MDLM default: off)")
    sampling_eps: float = param(1e-3, help="training draws t in [sampling_eps, 1] (MDLM's clip)")
    stratified: bool = param(True, help="one t per stratum of the batch (MDLM's 'antithetic')")
    loss_estimator: str = param(
        "nelbo", choices=("nelbo", "ratio"),
        help="training loss: 'nelbo' = w(t)·Σ_masked CE / L (MDLM); 'ratio' = w(t)·m(t)·mean over the "
             "masked positions of each sequence: lower variance at small t but BIASED — not the "
             "NELBO's expectation given t once a prediction depends on which other positions are "
             "masked (0.9–3% low on an exact Markov denoiser, below the entropy when integrated), "
             "so not a bound. Training only: evaluation always uses the exact NELBO.")
    prefix_cache: bool = param(
        False, help="sampling with semi-autoregressive blocks: Fast-dLLM's prefix cache — keys and "
                    "values of the text before the block are computed at the block's first step and "
                    "reused while it is denoised (APPROXIMATE: in a bidirectional model they depend "
                    "on the block's changing tokens; backbones with a KV cache)")
    dual_cache: bool = param(
        False, help="sampling with semi-autoregressive blocks: Fast-dLLM's DualCache — keys and "
                    "values of the text before AND after the block (the still-masked suffix) are "
                    "computed at the block's first step and reused, so a step feeds only the block "
                    "(APPROXIMATE, like prefix_cache; backbones with a KV cache)")

    def __post_init__(self):
        check(0.0 <= self.eps < 1.0, "process.eps", f"must be in [0, 1), got {self.eps}")
        check(0.0 <= self.sampling_eps < 1.0, "process.sampling_eps",
              f"must be in [0, 1), got {self.sampling_eps}")


def stratified_times(n: int, device: torch.device, generator: torch.Generator | None,
                     stratified: bool = True) -> torch.Tensor:
    """n draws in (0, 1]; when stratified, exactly one in each interval (i/n, (i+1)/n], the strata
    assigned to the n rows by a fresh random permutation on every call.

    The permutation is what makes each row's estimate unbiased on its own: row r's time is then
    uniform on (0, 1] (it lands in each stratum with probability 1/n), whereas tying stratum r to
    row r gives row 0 only t ≤ 1/n — a per-window bias, and a corpus figure that depends on the
    order of the batch (issue 19). The batch as a whole keeps one draw per stratum (the variance
    reduction of MDLM's 'antithetic' sampling). Every process that draws one t per row (masked,
    block, uniform, score-entropy, embedding) takes its times from here."""
    u = 1.0 - torch.rand(n, device=device, generator=generator)      # (0, 1]
    if stratified:
        u = (torch.arange(n, device=device) + u) / n                 # (n,) one per stratum
        u = u[torch.randperm(n, device=device, generator=generator)]
    return u


class MaskedProcess(Process):
    name = "masked"
    config_cls = MaskedConfig
    supports_threshold = True
    pads_exactly = True

    def __init__(self, cfg: MaskedConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.schedule = build_schedule(cfg.schedule, cfg.eps)
        self.mask_id = vocab_size

    @property
    def model_vocab_size(self) -> int:
        return self.vocab_size + 1

    @property
    def noise_token_id(self) -> int:
        return self.mask_id

    # ---- forward process and parameterisation ----------------------------------------------------
    def corrupt(self, x0: torch.Tensor, t: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t: each token masked independently with probability m(t). t: (B,)."""
        m = self.schedule.mask_prob(t)[:, None]                              # (B, 1)
        u = torch.rand(x0.shape, device=x0.device, generator=generator)
        return torch.where(u < m, torch.full_like(x0, self.mask_id), x0)

    def conditioning(self, t: torch.Tensor) -> torch.Tensor:
        """σ fed to the backbone: σ(t), or zeros when the model is time-agnostic."""
        if self.cfg.time_conditioning:
            return self.schedule.sigma_for_conditioning(t)
        return torch.zeros_like(t)

    def subs_log_probs(self, logits: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        """SUBS: log p_θ(x0 | x_t), (B, L, V). No mass on M; visible tokens copied."""
        logits = logits.float().clone()
        logits[..., self.mask_id] = NEG_INF
        logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        visible = xt != self.mask_id
        copy = torch.full_like(logp, NEG_INF).scatter_(-1, xt.unsqueeze(-1), 0.0)
        return torch.where(visible.unsqueeze(-1), copy, logp)

    # ---- loss and bound --------------------------------------------------------------------------
    def nelbo_at(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor,
                 generator: torch.Generator | None = None,
                 estimator: str = "nelbo",
                 valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence NELBO per real token at times t (B,): returns (nelbo (B,), masked fraction
        (B,)). ``valid`` (B, L): real tokens (padding is hidden from the network and scores 0).

        ``estimator='ratio'`` replaces Σ_masked/L by m(t)·Σ_masked/#masked/P(#masked > 0), a ratio
        estimator for training only. It is unbiased given t only when the per-position loss does
        not depend on the mask pattern: E[Σ/#masked | t] ≠ E[Σ | t]/E[#masked | t] for a model that
        reads its context (tested on the exact denoiser of a Markov source)."""
        xt = self.corrupt(x0, t, generator)
        logits = model(xt, self.conditioning(t), **pad_kwargs(valid))          # (B, L, V+1)
        masked = xt == self.mask_id
        if valid is not None:
            masked = masked & valid                                             # pads never count
        n = x0.shape[1] if valid is None else valid.sum(dim=1)                  # real tokens (B,)
        # −log p_θ(x0|x_t) at masked positions; visible positions contribute exactly 0 under SUBS
        logits = logits.float()
        logits[..., self.mask_id] = NEG_INF
        nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")      # (B, L)
        nll = torch.where(masked, nll, torch.zeros_like(nll))
        w = self.schedule.nelbo_weight(t)                                       # (B,)
        if estimator == "ratio":
            # if every masked position cost the same c on average, E[Σ_masked CE | t] = L·m(t)·c and
            # the masked mean estimates c (divided by P(#masked > 0) = 1 − (1 − m)^L because an
            # all-visible draw contributes 0). With context the cost depends on how many others are
            # masked, so this is a biased (ratio) estimator: a training loss, never the bound
            m = self.schedule.mask_prob(t)
            count = masked.sum(dim=1).clamp(min=1)
            hit = -torch.expm1(n * torch.log1p(-m.clamp(max=1 - 1e-12)))
            per_seq = w * m * nll.sum(dim=1) / count / hit
        else:
            per_seq = w * nll.sum(dim=1) / n
        return per_seq, masked.float().sum(dim=1) / n

    def loss(self, model: nn.Module, x0: torch.Tensor, valid: torch.Tensor | None = None) -> LossOutput:
        check_valid(x0, valid)
        t = stratified_times(x0.shape[0], x0.device, None, self.cfg.stratified)
        t = self.cfg.sampling_eps + (1.0 - self.cfg.sampling_eps) * t
        per_seq, frac = self.nelbo_at(model, x0, t, estimator=self.cfg.loss_estimator, valid=valid)
        loss = per_seq.mean()
        return LossOutput(loss, {"mask_frac": frac.mean().item()})

    def nelbo(self, model: nn.Module, x0: torch.Tensor,
              generator: torch.Generator | None = None,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        # the full integral over t ∈ (0, 1]: no sampling_eps clip, so the estimate is unbiased
        check_valid(x0, valid)
        t = stratified_times(x0.shape[0], x0.device, generator, True)
        return self.nelbo_at(model, x0, t, generator, valid=valid)[0]

    # ---- sampling --------------------------------------------------------------------------------
    def prior(self, shape, device, generator=None) -> torch.Tensor:
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def is_noisy(self, x: torch.Tensor) -> torch.Tensor:
        return x == self.mask_id

    def _span(self, editable: torch.Tensor) -> tuple[int, int]:
        """[lo, hi) columns a step works on: the editable ones, lo moved back onto the process's
        block grid (block diffusion reads a block from its first position)."""
        cols = editable.any(dim=0).nonzero().flatten()
        lo, hi = int(cols[0]), int(cols[-1]) + 1
        if self.block_grid:
            lo = lo // self.block_grid * self.block_grid
        return lo, hi

    def _network_logits(self, model: nn.Module, x: torch.Tensor, lo: int, hi: int, t: float,
                        ctx: StepContext) -> torch.Tensor:
        """The network's logits (B, hi − lo, V+1) at the span: one bidirectional forward, or with
        ``prefix_cache`` a forward of x[:, lo:] against the prefix's keys and values as they were
        at the block's first step (Fast-dLLM's PrefixCache; ``ctx.cache`` is cleared per block)."""
        sigma = self.conditioning(torch.full((x.shape[0],), t, device=x.device))
        cached = getattr(model, "supports_kv_cache", False)
        if self.cfg.dual_cache and cached and (lo > 0 or hi < x.shape[1]):
            return self._dual_cache_logits(model, x, lo, hi, sigma, ctx)
        if not (self.cfg.prefix_cache and lo > 0 and cached):
            return model(x, sigma, **ctx.forward_kwargs())[:, lo:hi]
        L = x.shape[1]
        cache = ctx.cache.get("prefix_kv")
        if cache is None:            # the block's first step: exact, and it stores every position
            cache = model.new_kv_cache()
            full = torch.ones(L, L, dtype=torch.bool, device=x.device)
            out = model(x, sigma, kv_cache=cache, attn_mask=full, **ctx.forward_kwargs())[:, lo:hi]
            cache.crop(lo)
            ctx.cache["prefix_kv"] = cache
            return out
        n = L - lo
        full = torch.ones(n, L, dtype=torch.bool, device=x.device)
        out = model(x[:, lo:], sigma, kv_cache=cache, attn_mask=full,
                    **ctx.forward_kwargs(lo))[:, :hi - lo]
        cache.crop(lo)
        return out

    def _dual_cache_logits(self, model: nn.Module, x: torch.Tensor, lo: int, hi: int,
                           sigma: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Fast-dLLM's DualCache: at the block's first step one exact bidirectional forward of
        every position stores all keys and values; the block's are dropped, leaving the prefix
        [0, lo) and the suffix [hi, L) compacted in the cache (their keys keep their positions).
        Later steps feed only x[:, lo:hi] at positions lo..hi−1, attending to the cached prefix,
        the cached suffix and the block itself; what they append is cropped off again. Exact at
        the first step and whenever the block is unchanged since; otherwise approximate (the
        cached keys saw the block as it was)."""
        L, n = x.shape[1], hi - lo
        cache = ctx.cache.get("dual_kv")
        if cache is None or ctx.cache.get("dual_span") != (lo, hi):
            cache = model.new_kv_cache()
            full = torch.ones(L, L, dtype=torch.bool, device=x.device)
            out = model(x, sigma, kv_cache=cache, attn_mask=full,
                        **ctx.forward_kwargs())[:, lo:hi]                     # (B, n, V+1)
            cache.drop(lo, hi)                                                # L − n positions
            ctx.cache["dual_kv"], ctx.cache["dual_span"] = cache, (lo, hi)
            return out
        full = torch.ones(n, L, dtype=torch.bool, device=x.device)            # (n, L − n + n)
        pos = torch.arange(lo, hi, device=x.device) if ctx.positions is None else ctx.positions[:, lo:hi]
        pads = {}
        if ctx.valid is not None:    # the keys in the cache's order: prefix, suffix, then the block
            v = ctx.valid
            pads["valid"] = torch.cat([v[:, :lo], v[:, hi:], v[:, lo:hi]], dim=1)   # (B, L)
        out = model(x[:, lo:hi], sigma, kv_cache=cache, attn_mask=full, positions=pos, **pads)
        cache.crop(L - n)
        return out

    def _predict(self, model: nn.Module, x: torch.Tensor, t: float, ctx: StepContext,
                 lo: int, hi: int) -> torch.Tensor:
        """Logits (B, hi − lo, V+1) over clean tokens (mask removed), cached across steps for a
        time-agnostic model while x does not change (MDLM's ddpm_cache: no new forward pass)."""
        cached = ctx.cache.get("logits")
        if (cached is not None and not self.cfg.time_conditioning and ctx.cache["span"] == (lo, hi)
                and torch.equal(ctx.cache["x"], x)):
            return cached
        logits = self._network_logits(model, x, lo, hi, t, ctx).float()
        logits[..., self.mask_id] = float("-inf")
        ctx.nfe += 1
        ctx.cache["logits"], ctx.cache["x"], ctx.cache["span"] = logits, x.clone(), (lo, hi)
        return logits

    def step(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> StepOutput:
        masked = (x == self.mask_id) & ctx.editable                             # (B, L)
        active = masked.any(dim=1)                      # (B,) rows with a mask left: only they draw
        if not active.any():
            return StepOutput(x, x)
        lo, hi = self._span(ctx.editable)
        logits = self._predict(model, x, ctx.t, ctx, lo, hi)                    # (B, S, V+1)
        opts = ctx.options
        xs, ms = x[:, lo:hi], masked[:, lo:hi]                                  # (B, S)
        ctx.draw_spans = self._row_spans(ctx, active, lo, hi)
        cand = rng.draw_spans(ctx.generator, active, ctx.draw_spans, lambda g, r, c: draw_tokens(
            logits[r, c], opts.temperature, opts.top_k, opts.top_p, g), xs)     # (B, S)
        if opts.threshold is not None or (ctx.n_commit is not None and opts.remasking != "ancestral"):
            commit = self._confidence_commit(logits, cand, ms, ctx)
        else:
            commit = self._ancestral_commit(ms, ctx)
        x_new, x0_hat = x.clone(), x.clone()
        x_new[:, lo:hi] = torch.where(commit, cand, xs)
        x0_hat[:, lo:hi] = torch.where(ms, cand, xs)
        return StepOutput(x_new, x0_hat)

    def _row_spans(self, ctx: StepContext, active: torch.Tensor, lo: int,
                   hi: int) -> list[tuple[int, int]] | None:
        """Each row's own span [a, b) within the step's span [lo, hi) (its editable columns, a moved
        back onto the block grid as in ``_span``), or None when every active row's is the whole
        span or the draws are not per row (then nothing differs from the union's draws)."""
        if not rng.per_row(ctx.generator):
            return None
        e = ctx.editable                                                        # (B, L)
        L = e.shape[1]
        first = e.int().argmax(dim=1)                                           # (B,)
        last = L - 1 - e.flip(1).int().argmax(dim=1)                            # (B,)
        if self.block_grid:
            first = first // self.block_grid * self.block_grid
        spans = list(zip((first - lo).tolist(), (last + 1 - lo).tolist()))
        if all(spans[i] == (0, hi - lo) for i in active.nonzero().flatten().tolist()):
            return None
        return spans

    def _ancestral_commit(self, masked: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Unmask each masked position with probability (α_s − α_t)/(1 − α_t); t, s floats or
        per-row (B,) tensors (a batch of rows on their own schedules, ``loop._block_schedule``)."""
        if isinstance(ctx.t, torch.Tensor):
            t, s = ctx.t.double().cpu(), ctx.s.double().cpu()                   # (B,)
            a_t, a_s = self.schedule.alpha(t), self.schedule.alpha(s)
            p = torch.where(s > 0, ((a_s - a_t) / (1.0 - a_t)).clamp(0.0, 1.0), torch.ones_like(t))
            # compared in the draws' float32, as the scalar p below is
            p = p.float().to(masked.device)[:, None]                            # (B, 1)
        else:
            t = torch.tensor(ctx.t, dtype=torch.float64)
            s = torch.tensor(ctx.s, dtype=torch.float64)
            a_t, a_s = self.schedule.alpha(t), self.schedule.alpha(s)
            p = float(((a_s - a_t) / (1.0 - a_t)).clamp(0.0, 1.0)) if ctx.s > 0 else 1.0
        u = rng.draw_spans(ctx.generator, masked.any(dim=1), ctx.draw_spans, lambda g, r, c: rng.rand(
            masked[r, c].shape, g, device=masked.device), torch.ones(masked.shape, device=masked.device))
        return masked & (u < p)

    def _confidence_commit(self, logits, cand, masked, ctx: StepContext) -> torch.Tensor:
        """LLaDA: commit the n_commit most confident masked positions of each row; with a
        threshold τ (Fast-dLLM) also every masked position whose confidence exceeds τ. The
        confidence is the un-tempered probability of the drawn token, as LLaDA's generate.py
        has it (``commit.select_confident``, shared with the uniform-noise processes)."""
        return select_confident(torch.softmax(logits, dim=-1), cand, masked, ctx)

    def finalize(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Noise removal: fill any mask still left with the argmax of p_θ (MDLM, §1.7)."""
        masked = (x == self.mask_id) & ctx.editable
        if not masked.any():
            return x
        lo, hi = self._span(ctx.editable)
        logits = self._predict(model, x, 0.0, ctx, lo, hi)
        x = x.clone()
        x[:, lo:hi] = torch.where(masked[:, lo:hi], logits.argmax(-1), x[:, lo:hi])
        return x
