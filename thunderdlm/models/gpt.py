"""GPT: a nanoGPT-style pre-LN transformer, causal or bidirectional (notes 002, 004).

::

    h0 = Dropout(wte[x] + P + T(σ))         (B, L, D)
        P: learned wpe[0..L-1] | fixed sinusoidal table | 0 (rotary acts inside attention)
        T: Linear(C, D)(TimestepEmbedder(σ)) when cfg.time_conditioning, else 0;
           (B, D) per sequence or (B, L, D) per token
    for each block:
        h = h + Dropout(Attn(LN(h)))         causal unless asked otherwise
        h = h + Dropout(MLP(LN(h)))          MLP = Linear → GELU(tanh) → Linear
    logits = lm_head(LN(h))                  lm_head.weight is wte.weight when tied

Init as nanoGPT: every Linear and Embedding weight ~ N(0, init_std²), biases 0, and the
residual projections (``c_proj``) ~ N(0, (init_std / √(2 n_layer))²). ``cfg.bias`` toggles
the biases of Linear and LayerNorm layers. The same network serves the autoregressive baseline
(``causal=True``), uniform / masked diffusion (bidirectional) and diffusion forcing (causal with
per-token σ).

With a ``KVCache`` (``model(x_new, causal=True, kv_cache=cache)``) ``x_new`` holds the tokens at
positions ``P = cache.length`` onwards: the position table is read at ``P..P+n-1`` (rotary angles
likewise) and each block appends its keys and values to the cache.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from thunderdlm.models.base import Backbone
from thunderdlm.models.config import ModelConfig
from thunderdlm.models.kv_cache import KVCache, LayerKV
from thunderdlm.models.layers import (MLP, LayerNorm, Rotary, SelfAttention, TimestepEmbedder,
                                      per_token, sinusoidal_positions)


class GPTBlock(nn.Module):
    """Pre-LN block: ``h + attn(LN(h))`` then ``h + mlp(LN(h))``."""

    def __init__(self, cfg: ModelConfig, rotary: Rotary | None) -> None:
        super().__init__()
        d = cfg.n_embd
        self.ln_1 = LayerNorm(d, bias=cfg.bias)
        self.attn = SelfAttention(d, cfg.n_head, bias=cfg.bias, attn_dropout=cfg.dropout,
                                  rotary=rotary)
        self.ln_2 = LayerNorm(d, bias=cfg.bias)
        self.mlp = MLP(d, cfg.mlp_ratio, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h: torch.Tensor, causal: bool, kv: LayerKV | None = None,
                mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """h: (B, L, D) -> (B, L, D); ``kv``: this block's slot of a KV cache, if decoding;
        ``mask`` / ``positions``: see ``SelfAttention.forward``."""
        h = h + self.dropout(self.attn(self.ln_1(h), causal=causal, kv=kv, mask=mask,
                                       positions=positions))
        h = h + self.dropout(self.mlp(self.ln_2(h)))
        return h


class GPT(Backbone):
    """nanoGPT-style transformer; see the module docstring for the equations."""

    supports_kv_cache = True

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_seq_len: int,
                 out_dim: int | None = None) -> None:
        super().__init__(cfg, vocab_size, max_seq_len, out_dim)
        d = cfg.n_embd
        self.wte = nn.Embedding(vocab_size, d)                               # (V, D)
        self.wpe = nn.Embedding(max_seq_len, d) if cfg.pos_emb == "learned" else None
        if cfg.pos_emb == "sinusoidal":  # fixed, rebuilt at init: kept out of checkpoints
            self.register_buffer("pos_table", sinusoidal_positions(max_seq_len, d),
                                 persistent=False)                           # (max_seq_len, D)
        else:
            self.pos_table = None
        self.rotary = Rotary(cfg.head_dim) if cfg.pos_emb == "rotary" else None
        self.time_embed: TimestepEmbedder | None = None
        self.time_proj: nn.Linear | None = None
        if cfg.time_conditioning:                       # T(σ) = Linear(C, D)(embed(σ))
            self.time_embed = TimestepEmbedder(cfg.cond_dim)
            self.time_proj = nn.Linear(cfg.cond_dim, d, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(GPTBlock(cfg, self.rotary) for _ in range(cfg.n_layer))
        self.ln_f = LayerNorm(d, bias=cfg.bias)
        self.lm_head = nn.Linear(d, self.out_dim, bias=False)
        self._init_weights()
        if cfg.tie_embeddings and self.out_dim == vocab_size:
            self.lm_head.weight = self.wte.weight    # one (V, D) tensor for input and output

    def _init_weights(self) -> None:
        """N(0, init_std²) weights, zero biases; residual projections scaled by 1/√(2 n_layer)."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = std / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=residual_std)

    def _embed(self, h: torch.Tensor, sigma: torch.Tensor, offset: int = 0,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """+ position (+ time) embedding: h = wte[x] (B, L, D), sigma (B,) | (B, L) -> (B, L, D).

        The positions are ``positions`` (L,) when given, else ``offset..offset+L-1``
        (``offset > 0`` with a KV cache).
        """
        L = h.shape[1]
        if positions is None:
            positions = torch.arange(offset, offset + L, device=h.device)    # (L,)
        if self.wpe is not None:
            h = h + self.wpe(positions)                                      # + (L, D)
        if self.pos_table is not None:
            h = h + self.pos_table[positions].to(h.dtype)                    # + (L, D)
        if self.time_embed is not None and self.time_proj is not None:
            t = self.time_proj(self.time_embed(sigma))                       # (B, [L,] D)
            h = h + per_token(t)
        return self.drop(h)

    def forward(self, x: torch.Tensor | None, sigma: torch.Tensor | None = None, *,
                causal: bool | None = None, kv_cache: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, return_hidden: bool = False,
                attn_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L) ids, sigma: (B,) | (B, L) | None -> (B, L, out_dim) float32 logits.

        With ``kv_cache``: x (B, n) are the tokens after the cached ones -> (B, n, out_dim).
        ``inputs_embeds`` (B, L, D) replaces wte[x]; ``return_hidden`` returns ln_f(h) (B, L, D);
        ``attn_mask`` / ``positions`` / ``valid`` (key padding): see the contract in ``models/base.py``.
        """
        x, h = self._input_embeddings(x, inputs_embeds, self.wte.weight,
                                      self._structure_limit(positions))     # (B, L), (B, L, D)
        causal = self._resolve_causal(causal)
        sigma = self._prepare_sigma(x, sigma)                                # (B,) or (B, L)
        offset = 0
        if kv_cache is not None:
            self._check_kv_cache(x, causal, kv_cache, attn_mask)
            offset = kv_cache.length
        self._check_structure(x.shape[1], attn_mask, positions, offset)
        attn_mask = self._with_padding(attn_mask, valid, causal, *x.shape, offset, h.device)
        h = self._embed(h, sigma, offset, positions)                         # (B, L, D)
        for i, block in enumerate(self.blocks):
            h = block(h, causal, kv_cache.layer(i) if kv_cache is not None else None,
                      attn_mask, positions)
        if kv_cache is not None:
            kv_cache.advance(x.shape[1])
        h = self.ln_f(h)
        if return_hidden:
            return h.float()                                                 # (B, L, D)
        return self.lm_head(h).float()                                       # (B, L, out_dim)

    @property
    def token_embedding(self) -> torch.Tensor:
        return self.wte.weight

    def _embedding_parameters(self) -> list[nn.Parameter]:
        tables = [self.wte.weight]
        if self.wpe is not None:
            tables.append(self.wpe.weight)
        return tables

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, max_seq_len={self.max_seq_len}, "
                f"pos_emb={self.cfg.pos_emb!r}, time_conditioning={self.cfg.time_conditioning}, "
                f"tied={self.cfg.tie_embeddings}, causal={self.cfg.causal}")
