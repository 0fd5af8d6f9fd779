"""Layers shared by the backbones: timestep embedder, rotary and sinusoidal positions,
fp32 LayerNorm, adaLN modulation, self-attention and the MLP.

Notation: ``B`` batch, ``L`` length, ``D`` width, ``H`` heads, ``Dh = D / H``, ``C`` cond width.
``sigma`` is the noise level fed to the backbone, one per sequence ``(B,)`` or per token
``(B, L)``; conditioning tensors follow the same two layouts, ``(B, ·)`` or ``(B, L, ·)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.models.attention_mask import PiecewiseMask
from thunderdlm.models.kv_cache import LayerKV

# ----------------------------------------------------------------------------------------------
# conditioning
# ----------------------------------------------------------------------------------------------


def per_token(c: torch.Tensor) -> torch.Tensor:
    """Give a per-sequence tensor ``(B, D)`` a length axis ``(B, 1, D)``; keep ``(B, L, D)``."""
    return c.unsqueeze(1) if c.dim() == 2 else c


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x (1 + scale) + shift``.

    x: (B, L, D); shift, scale: (B, D) per sequence or (B, L, D) per token.
    """
    return x * (1 + per_token(scale)) + per_token(shift)



def zero_linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """A Linear layer whose weight (and bias) start at exactly zero."""
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer

class TimestepEmbedder(nn.Module):
    """Scalar noise level -> conditioning vector (DiT / SEDD).

    ``feats(σ) = [cos(σ f_0..f_{n-1}), sin(σ f_0..f_{n-1})]`` with ``f_k = P^{-k/n}``
    (``P = max_period = 10000``, ``n = freq_dim / 2 = 128``), then
    ``Linear(freq_dim, C) -> SiLU -> Linear(C, C)``.
    """

    def __init__(self, cond_dim: int, freq_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        if freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {freq_dim}")
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, cond_dim, bias=True),
            nn.SiLU(),
            nn.Linear(cond_dim, cond_dim, bias=True),
        )

    def features(self, sigma: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features in fp32: (...) -> (..., freq_dim)."""
        half = self.freq_dim // 2
        k = torch.arange(half, device=sigma.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(self.max_period) * k / half)           # (half,)
        args = sigma.float().unsqueeze(-1) * freqs                          # (..., half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)       # (..., freq_dim)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        """sigma: (B,) or (B, L) -> (B, C) or (B, L, C), in the dtype of the weights."""
        feats = self.features(sigma).to(self.mlp[0].weight.dtype)          # (B, [L,] 256)
        return self.mlp(feats)


# ----------------------------------------------------------------------------------------------
# positions
# ----------------------------------------------------------------------------------------------


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Half-split rotation (GPT-NeoX / SEDD): ``[x1, x2] -> [-x2, x1]`` on the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Rotary:
    """Rotary position embedding on queries and keys, half-split layout.

    Pair ``(x_i, x_{i + Dh/2})`` at position ``p`` is rotated by angle ``p θ_i`` with
    ``θ_i = base^{-2i/Dh}``, so ``q_m · k_n`` depends on positions only through ``n - m``.
    It has no parameters, so it is a plain object (not an ``nn.Module``, whose ``apply`` it would
    shadow) and one instance can serve every block; the cos/sin tables are cached for the last
    (length, device, dtype) and are never saved in a state dict.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        if head_dim % 2:
            raise ValueError(f"rotary needs an even head width, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def cos_sin(self, length: int, device: torch.device,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin tables of shape (L, Dh) for positions 0..L-1."""
        cached = self._cache
        if cached is not None and self._cache_fits(cached[0], length, device, dtype):
            return cached[0][:length], cached[1][:length]
        half = self.head_dim // 2
        i = torch.arange(half, device=device, dtype=torch.float32)
        inv_freq = self.base ** (-i / half)                                 # (Dh/2,)
        pos = torch.arange(length, device=device, dtype=torch.float32)
        angles = torch.outer(pos, inv_freq)                                 # (L, Dh/2)
        angles = torch.cat([angles, angles], dim=-1)                        # (L, Dh)
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        self._cache = (cos, sin)
        return cos, sin

    @staticmethod
    def _cache_fits(table: torch.Tensor, length: int, device: torch.device,
                    dtype: torch.dtype) -> bool:
        # a table made under inference_mode cannot be saved for a later backward pass
        usable = not table.is_inference() or torch.is_inference_mode_enabled()
        return (usable and table.shape[0] >= length and table.device == device
                and table.dtype == dtype)

    def apply(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0,
              positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q, k of shape (B, H, L, Dh) by their positions.

        The positions are ``offset..offset+L-1`` (``offset > 0``: incremental decoding with a KV
        cache, the new tokens sit after the ``offset`` cached ones), or ``positions`` (L,) long
        when given (block diffusion's ``x_t ⊕ x0`` input repeats positions 0..L-1 twice), or
        (B, L) long: each row's own (a left-padded batch of prompts of different lengths).
        """
        if positions is not None:
            cos, sin = self.cos_sin(int(positions.max()) + 1, q.device, q.dtype)
            cos, sin = cos[positions], sin[positions]                       # (L, Dh) | (B, L, Dh)
            if positions.dim() == 2:
                cos, sin = cos[:, None], sin[:, None]                       # (B, 1, L, Dh)
        else:
            cos, sin = self.cos_sin(offset + q.shape[-2], q.device, q.dtype)   # (offset + L, Dh)
            if offset:
                cos, sin = cos[offset:], sin[offset:]                       # (L, Dh)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k

    def __repr__(self) -> str:
        return f"Rotary(head_dim={self.head_dim}, base={self.base:g})"


def sinusoidal_positions(length: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed "Attention is all you need" table (L, D): even columns sin, odd columns cos."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)           # (L, 1)
    i = torch.arange(0, dim, 2, dtype=torch.float32)                        # (ceil(D/2),)
    angles = pos * base ** (-i / dim)                                       # (L, ceil(D/2))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


# ----------------------------------------------------------------------------------------------
# normalisation, attention, MLP
# ----------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """LayerNorm computed in fp32 even under autocast (SEDD), weight only unless ``bias``."""

    def __init__(self, dim: int, bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D) in x's dtype."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            bias = self.bias.float() if self.bias is not None else None
            y = F.layer_norm(x.float(), (self.dim,), self.weight.float(), bias, self.eps)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, bias={self.bias is not None}, eps={self.eps:g}"


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused QKV, optional rotary, SDPA, output projection.

    ``scaled_dot_product_attention`` picks flash / memory-efficient kernels on GPU.
    ``attn_dropout`` drops attention weights in training only. With ``kv`` (one layer's slot of a
    :class:`~thunderdlm.models.kv_cache.KVCache`, causal only) ``x`` holds the tokens at positions
    ``kv.offset .. kv.offset + L - 1``: their keys and values are appended to the cache and the
    queries attend to every cached position up to their own.
    """

    def __init__(self, dim: int, n_head: int, bias: bool = False, attn_dropout: float = 0.0,
                 rotary: Rotary | None = None) -> None:
        super().__init__()
        if dim % n_head:
            raise ValueError(f"width {dim} is not divisible by {n_head} heads")
        self.n_head = n_head
        self.attn_dropout = attn_dropout
        self.c_attn = nn.Linear(dim, 3 * dim, bias=bias)   # W_qkv
        self.c_proj = nn.Linear(dim, dim, bias=bias)       # W_o
        self.rotary = rotary

    def forward(self, x: torch.Tensor, causal: bool = False, kv: LayerKV | None = None,
                mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D).

        ``mask`` (L, L) or (B, 1, L, L) bool, True = may attend, or a ``PiecewiseMask`` (run piece
        by piece), replaces ``causal`` (block diffusion's block-causal patterns); ``positions`` (L,) long are the rotary positions
        (default 0..L-1). With ``kv`` see :meth:`_forward_cached`.
        """
        B, L, D = x.shape
        qkv = self.c_attn(x).view(B, L, 3, self.n_head, D // self.n_head)   # (B, L, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                      # 3 x (B, H, L, Dh)
        if kv is not None:
            return self._forward_cached(q, k, v, kv, mask, positions)
        if self.rotary is not None:
            q, k = self.rotary.apply(q, k, positions=positions)
        p = self.attn_dropout if self.training else 0.0
        if isinstance(mask, PiecewiseMask):                                 # structured pattern
            y = mask.attend(q, k, v, dropout_p=p)                           # (B, H, L, Dh)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                               is_causal=causal and mask is None)  # (B, H, L, Dh)
        y = y.transpose(1, 2).reshape(B, L, D)                              # (B, L, D)
        return self.c_proj(y)

    def _forward_cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: LayerKV,
                        mask: torch.Tensor | None = None,
                        positions: torch.Tensor | None = None) -> torch.Tensor:
        """n new queries over P cached + n new keys; q, k, v: (B, H, n, Dh).

        Default (``mask`` None): causal, query i at absolute position P + i sees keys 0..P+i.
        ``mask`` (n, P + n) bool replaces that rule (block decoding: a block's queries see the
        whole cache and the whole block). ``positions`` (n,) are the rotary positions of the new
        tokens (default P..P+n-1).
        """
        B, H, n, Dh = q.shape
        P = kv.offset
        if self.rotary is not None:
            # build the cos/sin table once for the cache's capacity, not once per new length
            self.rotary.cos_sin(kv.capacity, q.device, q.dtype)
            q, k = self.rotary.apply(q, k, offset=P, positions=positions)   # absolute positions
        k, v = kv.append(k, v)                                              # 2 x (B, H, P + n, Dh)
        is_causal = False
        if mask is None and n > 1 and P == 0:
            is_causal = True                                                # square causal mask
        elif mask is None and n > 1:
            # query i sits at absolute position P + i and sees keys 0..P+i; SDPA's is_causal
            # would align the mask top-left (query i sees keys 0..i) when n != P + n
            rows = torch.arange(P, P + n, device=q.device)[:, None]         # (n, 1)
            mask = torch.arange(P + n, device=q.device)[None, :] <= rows    # (n, P + n) bool
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                           is_causal=is_causal)             # (B, H, n, Dh)
        y = y.transpose(1, 2).reshape(B, n, H * Dh)                         # (B, n, D)
        return self.c_proj(y)

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, attn_dropout={self.attn_dropout}, rotary={self.rotary}"


class MLP(nn.Module):
    """``Linear(D, rD) -> GELU(tanh) -> Linear(rD, D)``."""

    def __init__(self, dim: int, ratio: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, ratio * dim, bias=bias)
        self.act = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(ratio * dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D)."""
        return self.c_proj(self.act(self.c_fc(x)))
