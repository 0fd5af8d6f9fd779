"""The Diffusion Forcing network: a causal GPT backbone plus the DF extras (note 004's ``DFGPT``).

::

    e(w)   = LN(wte[w])                        clean token embedding (B, L, D): parameter-free
                                               LayerNorm, so every token has norm ≈ √D (unit
                                               variance per coordinate, the scale the Gaussian
                                               schedule assumes) whatever the scale of wte
    h_in   = c·(x_k + SinusoidalPosEmb_D(k))   level embedding "sinusoidal" (the note: added), or
           = c·MLP([x_k, SinusoidalPosEmb_{D/2}(k)])  level embedding "mlp" (the official
                                               Transformer's concat + Linear-ReLU-Linear);
                                               c = ``input_scale`` (1 in the note: x_k has unit
                                               variance per coordinate, 50× nanoGPT's 0.02-std
                                               token embeddings, so the blocks' small initial
                                               outputs barely move the residual stream)
    out    = df_head(ln_f(GPT blocks(h_in + wpe)))  (B, L, D), causal attention

Shared with teacher forcing: ``wte`` (V + 1 rows: the AR process's BOS row stays, unused here),
positions, blocks and ``ln_f``. ``df_head`` is the backbone's own output projection, built with
``out_dim = n_embd`` (the Backbone contract's way to regress a continuous target), so no parameter
is left unused in a training step (DDP) whether or not the config ties embeddings; it is a bias-free
Linear(D, D) (the note's ``nn.Linear`` has a bias). The real noise level k (−1 = clean) is also
passed to the backbone as its per-token σ, so a GPT built with ``time_conditioning`` uses its own
time embedding too.

``forward(x_k, k, return_table=True)`` also returns the decoding table e(0..V−1) (V, D) computed
inside the forward, so that a DDP-wrapped network sees the embedding's gradient flow through its
forward call.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.models.base import Backbone

LEVEL_EMBEDDINGS = ("sinusoidal", "mlp")


class SinusoidalPosEmb(nn.Module):
    """The official ``SinusoidalPosEmb``: (N,) → (N, dim) = [sin(x f_i), cos(x f_i)],
    f_i = θ^{−i/(dim/2 − 1)}, i = 0..dim/2 − 1."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalPosEmb needs an even dim >= 4, got {dim}")
        self.dim, self.theta = dim, theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(self.theta) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=x.device, dtype=torch.float32) * -scale)
        arg = x.float()[..., None] * freqs                                     # (..., half)
        return torch.cat((arg.sin(), arg.cos()), dim=-1)                       # (..., dim)


class DiffusionForcingNet(nn.Module):
    """Causal GPT + noise-level embedding + embedding-space head; see the module docstring."""

    def __init__(self, backbone: Backbone, vocab_size: int, level_embedding: str = "sinusoidal",
                 input_scale: float = 1.0):
        super().__init__()
        D = backbone.n_embd
        if backbone.out_dim != D:
            raise ValueError(f"the backbone must be built with out_dim = n_embd = {D} "
                             f"(its output layer is the DF head), got {backbone.out_dim}")
        if backbone.token_embedding.shape[0] < vocab_size:
            raise ValueError(f"backbone has {backbone.token_embedding.shape[0]} token rows, "
                             f"fewer than the {vocab_size} tokens to decode")
        if level_embedding not in LEVEL_EMBEDDINGS:
            raise ValueError(f"unknown level embedding {level_embedding!r}; "
                             f"choose one of {list(LEVEL_EMBEDDINGS)}")
        self.backbone = backbone
        self.vocab_size = vocab_size            # tokens that can be decoded (no BOS)
        self.input_scale = input_scale
        self.level_embedding = level_embedding
        if level_embedding == "sinusoidal":
            self.level_embed = SinusoidalPosEmb(D)
            self.level_mlp = None
        else:
            k_dim = D // 2 if (D // 2) % 2 == 0 else D // 2 + 1
            self.level_embed = SinusoidalPosEmb(k_dim)
            self.level_mlp = nn.Sequential(nn.Linear(D + k_dim, D), nn.ReLU(), nn.Linear(D, D))

    # ---- shapes and tables --------------------------------------------------------------------------
    @property
    def n_embd(self) -> int:
        return self.backbone.n_embd

    @property
    def max_seq_len(self) -> int:
        return self.backbone.max_seq_len

    @property
    def df_head(self) -> nn.Linear:
        return self.backbone.lm_head

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """e(w) = LN(wte[w]): (B, L) long → (B, L, D) float32."""
        e = F.embedding(tokens, self.backbone.token_embedding).float()
        return F.layer_norm(e, (e.shape[-1],))

    def token_table(self) -> torch.Tensor:
        """(V, D) clean embeddings of every decodable token (the BOS row excluded)."""
        table = self.backbone.token_embedding[: self.vocab_size].float()
        return F.layer_norm(table, (table.shape[-1],))

    # ---- the network ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, level: torch.Tensor, *, return_table: bool = False,
                valid: torch.Tensor | None = None):
        """x: (B, L, D) noisy embeddings, level: (B, L) real noise levels (−1 = clean), valid (B, L)
        bool key-padding mask or None → (B, L, D) float32 model output [, (V, D) decoding table]."""
        k = level.float()
        if self.level_mlp is None:
            h = x + self.level_embed(k)                                         # (B, L, D)
        else:
            h = self.level_mlp(torch.cat([x, self.level_embed(k).to(x.dtype)], dim=-1))
        if self.input_scale != 1.0:
            h = h * self.input_scale
        padding = {} if valid is None else {"valid": valid}
        out = self.backbone(None, k, causal=True, inputs_embeds=h, **padding)   # (B, L, D)
        if return_table:
            return out, self.token_table()
        return out

    def num_params(self, non_embedding: bool = False) -> int:
        """Backbone parameters (as ``Backbone.num_params``, the DF head included) + the level MLP."""
        extra = sum(p.numel() for p in self.level_mlp.parameters()) if self.level_mlp is not None else 0
        return self.backbone.num_params(non_embedding) + extra
