"""Block diffusion (BD3-LM, Arriola et al. 2025; SPEC.md §7): blocks left to right, each denoised by
masked diffusion given the clean blocks before it.

Notation map (as in ``discrete/masked.py``, plus the blocks):

    bs            block size; block b holds positions [b·bs, (b+1)·bs), nb = L / bs blocks
    t_b           the noise time of block b, one per block (B, nb); every token of the block is
                  masked independently with probability m(t_b) = 1 − α(t_b)
    x_t           x0 with each block masked at its own t_b
    p_θ(·|x_t,b, x0_<b)   the network's SUBS distribution for block b, from the noisy block b and
                  the clean blocks before it (block-causal attention, ``block/attention.py``)

The likelihood factorises over blocks, −log p(x0) = Σ_b −log p(x0_b | x0_<b), and each factor is
bounded by the masked-diffusion NELBO of one block given its clean prefix::

    NELBO(x0) = Σ_b E_{t_b} E_{x_t,b} [ w(t_b) · Σ_{i ∈ b, x_t^i = M} −log p_θ(x0^i | x_t,b, x0_<b) ] / L

with w(t) = −α'_t/(1−α_t) (= 1/t for log-linear). ``bs = L`` is MDLM's bound; ``bs = 1`` with
t = 1 is the autoregressive NLL of the same network (each token masked, seeing the clean tokens
before it). Training computes every block's term in one forward over ``x_t ⊕ x0`` (length 2L, both
halves at positions 0..L−1, BD3-LM's mask) and keeps the first L outputs.

Training may draw t_b from a clipped interval [sampling_eps, sampling_eps_max] (BD3-LM's
data-driven variance reduction: ``select_noise_interval`` measures the NELBO's variance per
interval); the bound reported by ``nelbo`` always integrates over the whole (0, 1].

Sampling inherits the masked process's reverse step (ancestral, LLaDA's fixed-count confidence
commits, Fast-dLLM's threshold) and replaces how the network is called: the loop decodes the
blocks of this process's grid left to right (``block_grid``); with a KV cache (``kv_cache``, for
backbones with ``supports_kv_cache``) the clean blocks are fed once — the first call of a block
feeds the block just finished together with the new noisy block — and each call runs only the
current block's tokens against the cached keys and values. This is exact (the clean prefix never
sees later blocks), unlike a prefix cache over a bidirectional model.

Shifted head (an AR model converted to block diffusion: Fast-dLLM v2, SDAR; the hf adapter with
``model.shift_logits``): the causal LM predicts token i at position i−1, so the noisy token i reads
the output i−1 of its own block, and a block's first position reads the last clean token before
it (``shifted_reads``). With blocks of 1 this is the causal LM exactly: before any training,
decoding at τ = 1 with temperature 0 is the pretrained model's greedy AR decoding. With larger
blocks it is only close to it (inside a block attention is bidirectional, in the clean prefix as
in the noisy block), which training adapts to. The network is
called with ``shift_logits=False`` (x_t ⊕ x0 and chunks after a cache are not one left-to-right
sequence) and the process shifts; decoding with a cache keeps the last clean position's logits
for the steps that feed no clean token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.config import check, param
from thunderdlm.models.kv_cache import KVCache
from thunderdlm.processes.base import LossOutput, StepContext, check_valid, pad_kwargs, unwrap
from thunderdlm.processes.block.attention import (block_causal, chunk_mask, shifted_reads,
                                                  training_plan, training_positions)
from thunderdlm.processes.discrete.masked import NEG_INF, MaskedConfig, MaskedProcess, stratified_times

KV_KEY, FED_KEY = "block_kv", "block_fed"     # ctx.run_cache keys: the KVCache and the tokens in it
LAST_KEY = "block_last"      # ctx.run_cache: (position, logits (B, V+1)) of the last clean position fed


@dataclass
class BlockConfig(MaskedConfig):
    name: str = param("block", help="block diffusion (BD3-LM): blocks generated left to right, each "
                                    "denoised by masked diffusion given the clean blocks before it")
    block_size: int = param(16, help="tokens per block; 1 = autoregressive, seq_len = masked "
                                     "diffusion (the sequence length must be a multiple of it)")
    time_conditioning: bool = param(False, help="feed σ(t_b) to the network for the noisy block "
                                                "(BD3-LM default: off)")
    sampling_eps_max: float = param(
        1.0, help="training draws t_b in [sampling_eps, sampling_eps_max] (BD3-LM's clipped "
                  "interval β_min..β_max, see select_noise_interval); evaluation uses (0, 1]")
    kv_cache: bool = param(True, help="sample with an exact KV cache over the finished blocks; "
                                      "false recomputes the clean prefix at every step (same tokens)")

    def __post_init__(self):
        super().__post_init__()
        check(self.block_size >= 1, "process.block_size", f"must be ≥ 1, got {self.block_size}")
        check(self.sampling_eps <= self.sampling_eps_max <= 1.0, "process.sampling_eps_max",
              f"must lie in [sampling_eps={self.sampling_eps}, 1], got {self.sampling_eps_max}")
        check(self.loss_estimator == "nelbo", "process.loss_estimator",
              "block diffusion trains on the NELBO itself ('nelbo')")
        for name in ("prefix_cache", "dual_cache"):
            check(not getattr(self, name), f"process.{name}",
                  "block diffusion has an exact cache (process.kv_cache); the approximate prefix "
                  "and dual caches are for the plain masked process")


class BlockDiffusionProcess(MaskedProcess):
    name = "block"
    config_cls = BlockConfig

    # ---- blocks ----------------------------------------------------------------------------------
    @property
    def block_grid(self) -> int:
        """The sampler decodes blocks on this grid (positions [b·bs, (b+1)·bs))."""
        return self.cfg.block_size

    def _blocks(self, x0: torch.Tensor) -> int:
        """Blocks covering a window; a last, shorter block when L is not a multiple of bs."""
        return -(-x0.shape[1] // self.cfg.block_size)

    @staticmethod
    def shifted_head(model: nn.Module) -> bool:
        """True when the network's head is shifted (position i predicts token i + 1: the hf
        adapter with ``model.shift_logits``); it is then called with ``shift_logits=False``."""
        return bool(getattr(unwrap(model), "shifted_head", False))

    def _call(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor | None,
              shifted: bool, **kwargs) -> torch.Tensor:
        """model(x, sigma, **kwargs), each position's own (unshifted) output when ``shifted``."""
        if shifted:
            kwargs["shift_logits"] = False
        return model(x, sigma, **kwargs)

    # ---- loss and bound --------------------------------------------------------------------------
    def block_nelbo_at(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor,
                       generator: torch.Generator | None = None,
                       valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence NELBO per real token with block times t (B, nb), every block in one
        forward; ``valid`` (B, L) marks real tokens (the padding is hidden in both halves).

        Returns (nelbo (B,), masked fraction (B,))."""
        shifted = self.shifted_head(model)
        B, L = x0.shape
        bs = self.cfg.block_size
        t_tok = t.repeat_interleave(bs, dim=1)[:, :L]                           # (B, L)
        u = torch.rand(x0.shape, device=x0.device, generator=generator)
        masked = u < self.schedule.mask_prob(t_tok)                             # (B, L)
        xt = torch.where(masked, torch.full_like(x0, self.mask_id), x0)
        if valid is not None:
            masked = masked & valid                                             # pads never count
        n = L if valid is None else valid.sum(dim=1)                            # real tokens (B,)
        sigma = None
        if self.cfg.time_conditioning:   # σ(t_b) on the noisy half, 0 on the clean half
            sigma = torch.cat([self.schedule.sigma_for_conditioning(t_tok),
                               torch.zeros_like(t_tok)], dim=1)                 # (B, 2L)
        out = self._call(model, torch.cat([xt, x0], dim=1), sigma, shifted,
                         attn_mask=self._plan(L, x0.device),
                         positions=training_positions(L, x0.device),
                         **pad_kwargs(None if valid is None else valid.repeat(1, 2)))   # (B, 2L, V+1)
        reads = shifted_reads(L, bs, x0.device) if shifted else slice(0, L)
        logits = out[:, reads].float()                                          # (B, L, V+1)
        logits[..., self.mask_id] = NEG_INF                                     # SUBS
        nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")     # (B, L)
        nll = torch.where(masked, nll, torch.zeros_like(nll))
        per_seq = (self.schedule.nelbo_weight(t_tok) * nll).sum(dim=1) / n
        return per_seq, masked.float().sum(dim=1) / n

    def _plan(self, L: int, device: torch.device):
        """The x_t ⊕ x0 mask as pieces (``training_plan``), built once per (L, device)."""
        key = (L, str(device))
        plans = self.__dict__.setdefault("_plans", {})
        if key not in plans:
            plans[key] = training_plan(L, self.cfg.block_size, device=device)
        return plans[key]

    def block_times(self, B: int, nb: int, device: torch.device, lo: float, hi: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, nb) times in (lo, hi], one stratum of the B·nb draws each (BD3-LM), the strata
        assigned to (row, block) cells by a fresh permutation (``stratified_times``: unbiased per
        window and per block)."""
        u = stratified_times(B * nb, device, generator, self.cfg.stratified)     # (B·nb,)
        return (lo + (hi - lo) * u).view(B, nb)

    def loss(self, model: nn.Module, x0: torch.Tensor, valid: torch.Tensor | None = None) -> LossOutput:
        check_valid(x0, valid)
        t = self.block_times(x0.shape[0], self._blocks(x0), x0.device,
                             self.cfg.sampling_eps, self.cfg.sampling_eps_max)
        per_seq, frac = self.block_nelbo_at(model, x0, t, valid=valid)
        return LossOutput(per_seq.mean(), {"mask_frac": frac.mean().item()})

    def nelbo(self, model: nn.Module, x0: torch.Tensor,
              generator: torch.Generator | None = None,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        # the whole interval (0, 1]: an unbiased estimate of the exact NELBO
        check_valid(x0, valid)
        t = self.block_times(x0.shape[0], self._blocks(x0), x0.device, 0.0, 1.0, generator)
        return self.block_nelbo_at(model, x0, t, generator, valid)[0]

    @torch.no_grad()
    def select_noise_interval(self, model: nn.Module, batches: list[torch.Tensor],
                              widths: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8), stride: float = 0.05,
                              generator: torch.Generator | None = None) -> tuple[tuple[float, float], list[dict]]:
        """BD3-LM's data-driven clipping (SPEC.md §7.4): the training interval [β_min, β_max] whose
        loss has the lowest variance across ``batches``.

        Candidates: the full (sampling_eps, 1) and, per width w, [max(i, ε), max(i + w, ε)] for
        i = 0, stride, …, 1 − w. For each, the loss of every batch (block-averaged NELBO with t_b
        drawn from the interval) is recorded; the variance over batches ranks the candidates.
        Returns ((β_min, β_max), a table of {lo, hi, mean, var})."""
        eps = max(self.cfg.sampling_eps, 1e-3)
        cands = [(eps, 1.0)]
        for w in widths:
            i = 0.0
            while i <= 1.0 - w + 1e-9:
                cands.append((max(round(i, 6), eps), max(round(i + w, 6), eps)))
                i += stride
        table = []
        for lo, hi in cands:
            vals = torch.stack([self.block_nelbo_at(model, x0, self.block_times(
                x0.shape[0], self._blocks(x0), x0.device, lo, hi, generator), generator)[0].mean()
                for x0 in batches]).double()
            table.append({"lo": lo, "hi": hi, "mean": vals.mean().item(), "var": vals.var().item()})
        best = min(table, key=lambda r: r["var"])
        return (best["lo"], best["hi"]), table

    # ---- sampling: the network call of one step -------------------------------------------------
    def _network_logits(self, model: nn.Module, x: torch.Tensor, lo: int, hi: int,
                        t: float, ctx: StepContext) -> torch.Tensor:
        """Logits (B, hi − lo, V+1) of the grid block span [lo, hi) (lo on the grid) given the
        clean tokens x[:, :lo]; positions ≥ hi are not read. A shifted head reads position i − 1
        (here one left-to-right sequence: clean blocks, then the noisy block)."""
        if self.cfg.kv_cache and getattr(model, "supports_kv_cache", False):
            return self._cached_logits(model, x, lo, hi, t, ctx)
        shifted = self.shifted_head(model)
        pos = torch.arange(hi, device=x.device)
        sigma = self._step_sigma(x.shape[0], lo, hi, 0, t, x.device)
        out = self._call(model, x[:, :hi], sigma, shifted,
                         attn_mask=block_causal(pos, pos, self.cfg.block_size),
                         **ctx.forward_kwargs(0, hi))                           # (B, hi, V+1)
        if shifted:
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        return out[:, lo:hi]

    def _step_sigma(self, B: int, lo: int, hi: int, start: int, t: float | torch.Tensor,
                    device: torch.device) -> torch.Tensor | None:
        """Per-token σ of the fed positions start..hi−1: 0 on clean ones, σ(t) on the block (t a
        float, or (B,) per row: rows on their own schedules)."""
        if not self.cfg.time_conditioning:
            return None
        sigma = torch.zeros(B, hi - start, device=device)
        if isinstance(t, torch.Tensor):       # rounded to float32 as torch.full rounds a float
            tt = t.to(device=device, dtype=sigma.dtype)
        else:
            tt = torch.full((B,), t, device=device)
        sigma[:, lo - start:] = self.schedule.sigma_for_conditioning(tt)[:, None]
        return sigma

    def _cached_logits(self, model: nn.Module, x: torch.Tensor, lo: int, hi: int, t: float,
                       ctx: StepContext) -> torch.Tensor:
        """Feed only what the cache lacks: the clean blocks from the cache's end to lo (once) and
        the noisy block [lo, hi); keep the clean part's keys and values, drop the block's.

        With a shifted head, position lo reads the output of the clean position lo − 1: taken
        from this chunk when it feeds clean tokens (and kept), else the one kept earlier; when
        none is kept for lo − 1 the chunk starts a block earlier to recompute it."""
        bs = self.cfg.block_size
        shifted = self.shifted_head(model)
        cache: KVCache | None = ctx.run_cache.get(KV_KEY)
        fed: torch.Tensor | None = ctx.run_cache.get(FED_KEY)                   # (B, P)
        if cache is None or fed is None or fed.shape[0] != x.shape[0]:
            cache, fed = model.new_kv_cache(), x[:, :0]
        P = min(fed.shape[1], lo)
        same = (fed[:, :P] == x[:, :P]).all(dim=0)                              # (P,)
        valid = P if bool(same.all()) else int((~same).int().argmax())
        start = valid // bs * bs                                                # whole clean blocks
        last = ctx.run_cache.get(LAST_KEY)
        if shifted and start == lo > 0 and (last is None or last[0] != lo - 1):
            start = (lo - 1) // bs * bs                  # recompute the clean output at lo − 1
        cache.crop(start)
        sigma = self._step_sigma(x.shape[0], lo, hi, start, t, x.device)
        out = self._call(model, x[:, start:hi], sigma, shifted, causal=True, kv_cache=cache,
                         attn_mask=chunk_mask(start, start, hi, bs, x.device),
                         **ctx.forward_kwargs(start, hi))                       # (B, hi−start, V+1)
        cache.crop(lo)
        ctx.run_cache[KV_KEY], ctx.run_cache[FED_KEY] = cache, x[:, :lo].clone()
        if not shifted:
            return out[:, lo - start:]
        if start < lo:                                   # the clean output at lo − 1 is in out
            ctx.run_cache[LAST_KEY] = (lo - 1, out[:, lo - 1 - start])
            return out[:, lo - 1 - start:hi - 1 - start]
        first = out[:, :1] if lo == 0 else ctx.run_cache[LAST_KEY][1][:, None]   # (B, 1, V+1)
        return torch.cat([first, out[:, :-1]], dim=1)
