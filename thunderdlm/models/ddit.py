"""DDiT: the diffusion transformer of SEDD and MDLM (user note 003, SPEC §3.7 / §1.9).

::

    h0 = E[x]                                   E: (V, D), Kaiming-uniform (a = √5)
    c  = SiLU(TimestepEmbedder(σ))              (B, C) per sequence or (B, L, C) per token
    for each block:
        (shift1, scale1, gate1, shift2, scale2, gate2) = adaLN(c)   # Linear(C, 6D), zero init
        h = h + gate1 · Dropout(W_o · Attn(rotary(W_qkv · modulate(LN(h), shift1, scale1))))
        h = h + gate2 · Dropout(MLP(modulate(LN(h), shift2, scale2)))
    (shift, scale) = Linear(C, 2D)(c)                              # zero init
    logits = W_out · modulate(LN(h), shift, scale) + b_out         # W_out, b_out zero init

``LN`` is a weight-only LayerNorm computed in fp32; ``W_qkv`` and ``W_o`` have no bias; the MLP
(``Linear → GELU(tanh) → Linear``) has biases. Attention is bidirectional unless ``causal``.

Because every gate and the output layer start at zero, each block is the identity map at init
and the logits are exactly 0 (SPEC §3.9.3). SEDD's ``scale_by_sigma`` and the zeroing of the
current token's score are process concerns and are not done here.

Per-token noise levels ``σ: (B, L)`` give per-token conditioning ``c: (B, L, C)``, and every
modulation broadcasts per token (used by diffusion forcing).

With a ``KVCache`` (causal only) ``x`` holds the new tokens at positions ``cache.length`` onwards;
``c`` comes from σ as usual (per sequence, or per token for the new positions), rotary angles are
absolute, and each block appends its keys and values to the cache.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.errors import ConfigError
from thunderdlm.models.base import Backbone
from thunderdlm.models.config import ModelConfig
from thunderdlm.models.kv_cache import KVCache, LayerKV
from thunderdlm.models.layers import (MLP, LayerNorm, Rotary, SelfAttention, TimestepEmbedder,
                                      modulate, per_token, zero_linear)


class FoldedNorm:
    """``modulate(LN(h), shift, scale)`` for one constant (shift, scale) (D,), as one LayerNorm:
    ``LN_w(h)·(1 + scale) + shift = LN(h; weight = w·(1 + scale), bias = shift)``, computed in fp32
    like ``LayerNorm``. Exact in real arithmetic; in floats it differs by rounding (~1e-7)."""

    __slots__ = ("dim", "eps", "weight", "bias")

    def __init__(self, norm: LayerNorm, shift: torch.Tensor, scale: torch.Tensor) -> None:
        self.dim, self.eps = norm.dim, norm.eps
        w = norm.weight.float() * (1 + scale.float())                         # (D,)
        b = shift.float() if norm.bias is None else norm.bias.float() * (1 + scale.float()) + shift.float()
        self.weight, self.bias = w, b

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D) in x's dtype."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = F.layer_norm(x.float(), (self.dim,), self.weight, self.bias, self.eps)
        return y.to(x.dtype)


class FoldedBlock:
    """One block's adaLN for a constant condition: two folded norms and the two gates (D,)."""

    __slots__ = ("norm1", "norm2", "gate1", "gate2")

    def __init__(self, norm1: FoldedNorm, norm2: FoldedNorm, gate1: torch.Tensor,
                 gate2: torch.Tensor) -> None:
        self.norm1, self.norm2, self.gate1, self.gate2 = norm1, norm2, gate1, gate2


class DDiTBlock(nn.Module):
    """One adaLN-modulated transformer block with gated residuals."""

    def __init__(self, cfg: ModelConfig, rotary: Rotary) -> None:
        super().__init__()
        d = cfg.n_embd
        self.norm1 = LayerNorm(d)
        self.attn = SelfAttention(d, cfg.n_head, bias=False, attn_dropout=0.0, rotary=rotary)
        self.norm2 = LayerNorm(d)
        self.mlp = MLP(d, cfg.mlp_ratio, bias=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.adaLN_modulation = zero_linear(cfg.cond_dim, 6 * d)

    def forward(self, h: torch.Tensor, c: torch.Tensor | FoldedBlock, causal: bool,
                kv: LayerKV | None = None, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """h: (B, L, D), c: (B, C) or (B, L, C), or this block's ``FoldedBlock`` -> (B, L, D);
        ``kv``: a KV-cache slot if decoding; ``mask`` / ``positions``: see ``SelfAttention.forward``."""
        if isinstance(c, FoldedBlock):
            n1, n2 = c.norm1, c.norm2
            gate1, gate2 = c.gate1, c.gate2                                  # (D,) each
        else:
            mod = self.adaLN_modulation(c)                                   # (B, [L,] 6D)
            shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)  # 6 x (B, [L,] D)
            gate1, gate2 = per_token(gate1), per_token(gate2)
            n1 = lambda x: modulate(self.norm1(x), shift1, scale1)           # noqa: E731
            n2 = lambda x: modulate(self.norm2(x), shift2, scale2)           # noqa: E731
        a = self.attn(n1(h), causal=causal, kv=kv, mask=mask, positions=positions)
        h = h + gate1 * self.dropout(a)                                      # (B, L, D)
        m = self.mlp(n2(h))
        h = h + gate2 * self.dropout(m)                                      # (B, L, D)
        return h

    def fold(self, c: torch.Tensor) -> FoldedBlock:
        """This block's adaLN for one constant condition c (1, C), folded into its LayerNorms."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[0].chunk(6)
        return FoldedBlock(FoldedNorm(self.norm1, shift1, scale1), FoldedNorm(self.norm2, shift2, scale2),
                           gate1, gate2)


class DDiTFinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a zero-initialised projection to the vocabulary."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.norm_final = LayerNorm(cfg.n_embd)
        self.adaLN_modulation = zero_linear(cfg.cond_dim, 2 * cfg.n_embd)
        self.linear = zero_linear(cfg.n_embd, vocab_size)

    def features(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """h: (B, L, D), c: (B, C) or (B, L, C) -> the modulated, normalised (B, L, D)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)            # 2 x (B, [L,] D)
        return modulate(self.norm_final(h), shift, scale)

    def forward(self, h: torch.Tensor, c: torch.Tensor | FoldedNorm) -> torch.Tensor:
        """h: (B, L, D), c: (B, C) or (B, L, C), or the folded final norm -> (B, L, V)."""
        return self.linear(c(h) if isinstance(c, FoldedNorm) else self.features(h, c))

    def fold(self, c: torch.Tensor) -> FoldedNorm:
        """The final adaLN for one constant condition c (1, C), folded into the LayerNorm."""
        shift, scale = self.adaLN_modulation(c)[0].chunk(2)
        return FoldedNorm(self.norm_final, shift, scale)


class DDiT(Backbone):
    """SEDD / MDLM diffusion transformer; see the module docstring for the equations."""

    supports_kv_cache = True

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_seq_len: int,
                 out_dim: int | None = None) -> None:
        super().__init__(cfg, vocab_size, max_seq_len, out_dim)
        if cfg.pos_emb != "rotary":
            raise ConfigError(f"config field 'model.pos_emb': DDiT supports rotary positions "
                              f"only, got {cfg.pos_emb!r}")
        self.vocab_embed = nn.Parameter(torch.empty(vocab_size, cfg.n_embd))  # (V, D)
        nn.init.kaiming_uniform_(self.vocab_embed, a=math.sqrt(5))
        self.sigma_map = TimestepEmbedder(cfg.cond_dim)
        self.rotary = Rotary(cfg.head_dim)              # one cos/sin cache shared by all blocks
        self.blocks = nn.ModuleList(DDiTBlock(cfg, self.rotary) for _ in range(cfg.n_layer))
        self.output_layer = DDiTFinalLayer(cfg, self.out_dim)

    def forward(self, x: torch.Tensor | None, sigma: torch.Tensor | None = None, *,
                causal: bool | None = None, kv_cache: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, return_hidden: bool = False,
                attn_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L) ids, sigma: (B,) | (B, L) | None -> (B, L, out_dim) float32 logits.

        With ``kv_cache``: x (B, n) are the tokens after the cached ones, sigma (B,) or (B, n)
        -> (B, n, out_dim). ``inputs_embeds`` (B, L, D) replaces E[x]; ``return_hidden`` returns
        the (B, L, D) features the output projection reads; ``attn_mask`` / ``positions`` /
        ``valid`` (key padding): see the contract in ``models/base.py``.
        """
        x, h = self._input_embeddings(x, inputs_embeds, self.vocab_embed,
                                      self._structure_limit(positions))     # (B, L), (B, L, D)
        causal = self._resolve_causal(causal)
        if kv_cache is not None:
            self._check_kv_cache(x, causal, kv_cache, attn_mask)
        self._check_structure(x.shape[1], attn_mask, positions,
                              kv_cache.length if kv_cache is not None else 0)
        attn_mask = self._with_padding(attn_mask, valid, causal, *x.shape,
                                       kv_cache.length if kv_cache is not None else 0, h.device)
        if self.cfg.time_conditioning and sigma is not None:
            sigma = self._prepare_sigma(x, sigma)                            # (B,) or (B, L)
            c = F.silu(self.sigma_map(sigma))                                # (B, [L,] C)
            conds, final = [c] * len(self.blocks), c
        elif torch.is_grad_enabled() or return_hidden:
            # time-agnostic (MDLM), or no σ given (σ = 0): one (1, C) row, broadcast
            c = self._constant_condition(h.device)                           # (1, C)
            conds, final = [c] * len(self.blocks), c
        else:            # sampling / evaluation: the constant adaLN folded into the norms, once
            conds, final = self._folded(h.device)
        for i, (block, c) in enumerate(zip(self.blocks, conds)):
            h = block(h, c, causal, kv_cache.layer(i) if kv_cache is not None else None,
                      attn_mask, positions)
        if kv_cache is not None:
            kv_cache.advance(x.shape[1])
        if return_hidden:
            return self.output_layer.features(h, final).float()              # (B, L, D)
        return self.output_layer(h, final).float()                           # (B, L, out_dim)

    def _constant_condition(self, device: torch.device) -> torch.Tensor:
        """SiLU(sigma_map(0)) as one (1, C) row: a time-agnostic model's conditioning is the same
        for every row, so the adaLN layers run on one row and broadcast."""
        return F.silu(self.sigma_map(torch.zeros(1, device=device)))

    def _folded(self, device: torch.device) -> tuple[list[FoldedBlock], FoldedNorm]:
        """Every block's adaLN for the constant condition, folded into its norms (no autograd).

        A decoding call then runs the same ops as a plain pre-LN transformer block (two norms,
        attention, MLP, two gated residuals) instead of 6 + 2 adaLN projections, chunks and
        modulations. Computed once and reused while no parameter has changed (keyed by every
        parameter's storage and in-place version counter, so an optimizer step invalidates it)."""
        params = self.__dict__.get("_folded_params")
        if params is None:                     # walking the module tree each call costs ~10%
            params = self.__dict__["_folded_params"] = list(self.parameters())
        key = (device, *[(p.data_ptr(), p._version) for p in params])
        cached = self.__dict__.get("_folded_cache")
        if cached is None or cached[0] != key:
            c = self._constant_condition(device)                             # (1, C)
            cached = (key, ([b.fold(c) for b in self.blocks], self.output_layer.fold(c)))
            self.__dict__["_folded_cache"] = cached
        return cached[1]

    @property
    def token_embedding(self) -> torch.Tensor:
        return self.vocab_embed

    def _embedding_parameters(self) -> list[nn.Parameter]:
        return [self.vocab_embed]

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, max_seq_len={self.max_seq_len}, "
                f"time_conditioning={self.cfg.time_conditioning}, causal={self.cfg.causal}")
