"""The network of embedding diffusion: a backbone wrapped with the embedding bridge (user note 001).

::

    source table  E ∈ R^{V×D}       the backbone's own token table (learned from scratch), or a
                                    pretrained model's (``set_source``), trainable or frozen
    bridge        e_v = LN₀(P·E_v)  P: Linear(D, d) without bias, LN₀ a LayerNorm without weight or
                                    bias: every latent has mean 0 and variance 1 over its d entries,
                                    so clean latents are roughly N(0, I) per dimension (isotropic,
                                    the scale the Gaussian noise assumes). Without the bridge
                                    (note 000's recipe) e_v = E_v: raw embeddings at their own scale.
    input         h0 = c·(W_in·z_t + W_sc·x̂_sc) [+ p(v | z_t)·E]   (B, L, D); c = ``input_scale``,
                                    W_sc zero-initialised, x̂_sc
                                    the self-conditioning estimate (zeros when off / on the first
                                    pass); with ``input_posterior`` also the expected source
                                    embedding under each position's own token posterior
    backbone      f = backbone(inputs_embeds=h0, σ = 1000·t)
    heads         "regression": out = f ∈ R^d (B, L, d): x̂0, ε̂ or v̂ by the parameterisation
                  "softmax" (Plaid / CDCD): out = logits ∈ R^V and x̂0 = softmax(logits)·e, the
                                    expected latent; the logits double as the rounding logits

The process (``process.py``) owns the math; this module only owns parameters and shapes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.models.base import Backbone
from thunderdlm.models.layers import zero_linear
from thunderdlm.processes.embedding.time_importance import TimeImportance


class EmbeddingDenoiser(nn.Module):
    """Bridge + backbone + heads; ``forward(z, t, x_sc) -> (B, L, out)`` raw head output."""

    def __init__(self, backbone: Backbone, latent_dim: int, *, bridge: bool, head: str,
                 freeze_embeddings: bool, anchor_dim: int | None, rounding_bias: bool,
                 time_bins: int | None = None, input_scale: float = 1.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.latent_dim = latent_dim
        self.input_scale = input_scale
        self.bridge = bridge
        self.head = head
        D = backbone.n_embd
        self.proj = nn.Linear(D, latent_dim, bias=False) if bridge else None       # P
        self.in_proj = nn.Linear(latent_dim, D)                                    # W_in
        self.sc_proj = zero_linear(latent_dim, D)                                  # W_sc
        # note 001's inverse projector: denoised latents back to the source embedding space,
        # for the anchor loss against the (pretrained) embeddings
        self.anchor_proj = nn.Linear(latent_dim, anchor_dim) if anchor_dim else None
        self.rounding_bias = nn.Parameter(torch.zeros(backbone.vocab_size)) if rounding_bias else None
        # the history of the bound's integrand over t (importance sampling of t), or None
        self.time_sampler = TimeImportance(time_bins) if time_bins else None
        if freeze_embeddings:
            backbone.token_embedding.requires_grad_(False)

    # ---- the bridge ----------------------------------------------------------------------------
    @property
    def source(self) -> torch.Tensor:
        """E: (V, D) the source token embeddings (a pretrained model's table may hold padding rows
        past the tokenizer's V; they are never latents)."""
        return self.backbone.token_embedding[: self.backbone.vocab_size]

    def set_source(self, table: torch.Tensor, trainable: bool = False) -> None:
        """Replace E by a pretrained table (V, D) (adapters, issue 7)."""
        src = self.backbone.token_embedding
        if tuple(table.shape) != tuple(src.shape):
            raise ValueError(f"source embeddings must be {tuple(src.shape)}, got {tuple(table.shape)}")
        with torch.no_grad():
            src.copy_(table)
        src.requires_grad_(trainable)

    def embed(self, e: torch.Tensor) -> torch.Tensor:
        """Source embeddings (..., D) -> latents (..., d)."""
        if self.proj is None:
            return e
        return F.layer_norm(self.proj(e), (self.latent_dim,))                      # LN₀(P·e)

    def latents(self) -> torch.Tensor:
        """All vocabulary latents e: (V, d)."""
        return self.embed(self.source)

    def clean_latents(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L) token ids -> clean latents (B, L, d)."""
        return self.embed(F.embedding(x, self.source))

    # ---- the denoiser --------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, t: torch.Tensor, x_sc: torch.Tensor | None = None,
                token_probs: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, L, d), t (B,) in [0, 1], x_sc (B, L, d) or None, token_probs (B, L, V) or None,
        valid (B, L) bool key-padding mask or None -> (B, L, d | V) float32."""
        if x_sc is None:
            x_sc = torch.zeros_like(z)
        h = self.input_scale * (self.in_proj(z) + self.sc_proj(x_sc))               # (B, L, D)
        if token_probs is not None:                                                 # E_p[E_v]
            h = h + token_probs.to(self.source.dtype) @ self.source
        padding = {} if valid is None else {"valid": valid}
        return self.backbone(None, 1000.0 * t, inputs_embeds=h, **padding)

    def num_params(self, non_embedding: bool = False) -> int:
        own = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("backbone."))
        return self.backbone.num_params(non_embedding) + own
