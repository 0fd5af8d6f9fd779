"""A thunderdlm diffusion LM for plain ``transformers`` (``thunderdlm export RUN --out DIR``)::

    model = AutoModel.from_pretrained(DIR, trust_remote_code=True)
    logits = model(input_ids, timesteps=sigma).logits          # (B, L, out_dim) float32

Self-contained: this file imports only torch and transformers (it is copied into the export folder
and must run where thunderdlm is not installed). Every module mirrors the thunderdlm module of the
same name and state-dict keys, and computes the same math (the export test compares the logits with
thunderdlm's to 1e-5 in a process that imports only torch and transformers).

Inputs of :meth:`ThunderDLMModel.forward` (``B`` batch, ``L`` length, ``D`` width, ``d`` latent):

- ``input_ids`` (B, L) long: token ids (< ``config.vocab_size``: the mask / BOS id included).
- ``timesteps``: what the backbone embeds as its noise level, (B,) per sequence or (B, L) per token;
  ``None`` = 0. Masked / block: σ(t) of the schedule when the process is time-conditioned, else 0
  (the network ignores it); uniform / score-entropy: the process's conditioning value; embedding
  wrapper: t in [0, 1] (multiplied by 1000 inside); forcing wrapper: the noise level k per token
  (-1 = clean). ``generation_config.json`` names the process and its schedule.
- ``attention_mask``: (B, L) 1/0 or bool = padding (the transformers convention: 0 on pads, which
  no query then attends), or a (B|1, 1, L, L) bool pattern (True = may attend) that replaces the
  default direction (block diffusion's block-causal masks). ``position_ids`` (L,) or (1, L) long
  give explicit positions (block diffusion's x_t ⊕ x0 input repeats 0..L-1).
- ``inputs_embeds``: (B, L, D) instead of ids (backbone only); the embedding wrapper reads the noisy
  latents (B, L, d) here, with ``self_conditioning`` (B, L, d) and ``token_probs`` (B, L, V); the
  forcing wrapper reads the noisy token embeddings (B, L, D).
- ``causal``: override the default attention direction (``config.causal``).

``generate()`` samples masked and block diffusion models (LLaDA's low-confidence remasking, block
by block); every other process has its own reverse process, which ``thunderdlm sample DIR`` runs
(``generate()`` says so by name instead of decoding left to right).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_thunderdlm import ThunderDLMConfig


@dataclass
class ThunderDLMOutput(ModelOutput):
    logits: torch.FloatTensor | None = None     # (B, L, out_dim) float32


# ---- layers (thunderdlm/models/layers.py) ------------------------------------------------------------

def per_token(c: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, 1, D); (B, L, D) unchanged."""
    return c.unsqueeze(1) if c.dim() == 2 else c


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (1 + scale) + shift, per sequence or per token."""
    return x * (1 + per_token(scale)) + per_token(shift)


def zero_linear(i: int, o: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(i, o, bias=bias)
    nn.init.zeros_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class TimestepEmbedder(nn.Module):
    """σ -> [cos(σ f_k), sin(σ f_k)] (f_k = 10000^{-k/128}) -> Linear -> SiLU -> Linear."""

    def __init__(self, cond_dim: int, freq_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        k = torch.arange(half, device=sigma.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(self.max_period) * k / half)              # (half,)
        args = sigma.float().unsqueeze(-1) * freqs                             # (..., half)
        feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)          # (..., 256)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, base: float = 10000.0):
    """Half-split rotary on q, k (B, H, L, Dh) at ``positions`` (L,): angle p·base^{-2i/Dh}."""
    half = q.shape[-1] // 2
    i = torch.arange(half, device=q.device, dtype=torch.float32)
    inv_freq = base ** (-i / half)                                              # (Dh/2,)
    angles = torch.outer(positions.float(), inv_freq)                           # (L, Dh/2)
    angles = torch.cat([angles, angles], dim=-1)                                # (L, Dh)
    cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def sinusoidal_positions(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """(L,) -> (L, D): even columns sin(p·base^{-i/D}), odd columns cos."""
    pos = positions.float().unsqueeze(1)                                        # (L, 1)
    i = torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
    angles = pos * base ** (-i / dim)
    table = torch.zeros(len(positions), dim, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


class LayerNorm(nn.Module):
    """LayerNorm in fp32, weight only unless ``bias``."""

    def __init__(self, dim: int, bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), (self.dim,), self.weight.float(), bias, self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    """Fused QKV, optional rotary, SDPA with a bool mask (True = may attend) or the causal flag."""

    def __init__(self, dim: int, n_head: int, bias: bool, use_rotary: bool) -> None:
        super().__init__()
        self.n_head, self.use_rotary = n_head, use_rotary
        self.c_attn = nn.Linear(dim, 3 * dim, bias=bias)
        self.c_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, causal: bool, mask: torch.Tensor | None,
                positions: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.c_attn(x).view(B, L, 3, self.n_head, D // self.n_head)     # (B, L, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                          # 3 x (B, H, L, Dh)
        if self.use_rotary:
            q, k = rotary(q, k, positions)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.c_proj(y.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int, bias: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, ratio * dim, bias=bias)
        self.act = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(ratio * dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


def attention_pattern(mask: torch.Tensor | None, valid: torch.Tensor | None, causal: bool,
                      B: int, L: int, device) -> torch.Tensor | None:
    """``mask`` (L, L) / (B|1, 1, L, L) bool narrowed by the key-padding mask ``valid`` (B, L): no
    query sees a pad, every query sees itself (thunderdlm's ``Backbone._with_padding``)."""
    if valid is None:
        return mask
    k = torch.arange(L, device=device)
    if mask is not None:
        base = mask
    elif causal:
        base = k[None, :] <= k[:, None]
    else:
        base = torch.ones(L, L, dtype=torch.bool, device=device)
    own = k[None, :] == k[:, None]
    base = base.view(-1, 1, L, L) if base.dim() == 4 else base[None, None]
    return base & (valid[:, None, None, :].to(device) | own[None, None])       # (B, 1, L, L)


def input_embeddings(x: torch.Tensor | None, embeds: torch.Tensor | None, table: torch.Tensor):
    """(B, L) token ids or (B, L, D) embeddings -> (B, L, D) in the table's dtype."""
    if (x is None) == (embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    if embeds is not None:
        if embeds.dim() != 3 or embeds.shape[-1] != table.shape[1]:
            raise ValueError(f"inputs_embeds must be (B, L, {table.shape[1]}), got {tuple(embeds.shape)}")
        return embeds.shape[:2], embeds.to(table.dtype)
    if x.dim() != 2 or x.is_floating_point():
        raise ValueError(f"input_ids must be (B, L) integer ids, got {x.dtype} {tuple(x.shape)}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= table.shape[0]):
        raise ValueError(f"input_ids must lie in 0..{table.shape[0] - 1}")
    return x.shape, F.embedding(x, table)


def noise_levels(sigma, B: int, L: int, device) -> torch.Tensor:
    """σ as float32 (B,) or (B, L); None -> zeros (B,); a scalar is broadcast."""
    if sigma is None:
        return torch.zeros(B, device=device)
    sigma = torch.as_tensor(sigma, device=device).float()
    if sigma.dim() == 0:
        return sigma.expand(B)
    if tuple(sigma.shape) not in ((B,), (B, L)):
        raise ValueError(f"timesteps must be ({B},) or ({B}, {L}), got {tuple(sigma.shape)}")
    return sigma


# ---- DDiT (thunderdlm/models/ddit.py) -----------------------------------------------------------------

class DDiTBlock(nn.Module):
    def __init__(self, c: ThunderDLMConfig) -> None:
        super().__init__()
        d = c.n_embd
        self.norm1 = LayerNorm(d)
        self.attn = SelfAttention(d, c.n_head, bias=False, use_rotary=True)
        self.norm2 = LayerNorm(d)
        self.mlp = MLP(d, c.mlp_ratio, bias=True)
        self.adaLN_modulation = zero_linear(c.cond_dim, 6 * d)

    def forward(self, h, c, causal, mask, positions):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        a = self.attn(modulate(self.norm1(h), shift1, scale1), causal, mask, positions)
        h = h + per_token(gate1) * a
        m = self.mlp(modulate(self.norm2(h), shift2, scale2))
        return h + per_token(gate2) * m


class DDiTFinalLayer(nn.Module):
    def __init__(self, c: ThunderDLMConfig) -> None:
        super().__init__()
        self.norm_final = LayerNorm(c.n_embd)
        self.adaLN_modulation = zero_linear(c.cond_dim, 2 * c.n_embd)
        self.linear = zero_linear(c.n_embd, c.out_dim)

    def features(self, h, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return modulate(self.norm_final(h), shift, scale)


class DDiT(nn.Module):
    """h = E[x]; c = SiLU(embed(σ)); adaLN blocks; logits = W·modulate(LN(h)) + b."""

    def __init__(self, c: ThunderDLMConfig) -> None:
        super().__init__()
        self.cfg = c
        self.vocab_embed = nn.Parameter(torch.zeros(c.vocab_size, c.n_embd))     # (V, D)
        self.sigma_map = TimestepEmbedder(c.cond_dim)
        self.blocks = nn.ModuleList(DDiTBlock(c) for _ in range(c.n_layer))
        self.output_layer = DDiTFinalLayer(c)

    @property
    def token_embedding(self) -> torch.Tensor:
        return self.vocab_embed

    def forward(self, x, sigma, *, causal, inputs_embeds=None, mask=None, positions=None,
                valid=None, return_hidden=False):
        (B, L), h = input_embeddings(x, inputs_embeds, self.vocab_embed)
        positions = torch.arange(L, device=h.device) if positions is None else positions
        mask = attention_pattern(mask, valid, causal, B, L, h.device)
        if self.cfg.time_conditioning and sigma is not None:
            cond = F.silu(self.sigma_map(noise_levels(sigma, B, L, h.device)))     # (B, [L,] C)
        else:                                  # time-agnostic, or no σ: σ = 0 for every row
            cond = F.silu(self.sigma_map(torch.zeros(1, device=h.device)))          # (1, C)
        for block in self.blocks:
            h = block(h, cond, causal, mask, positions)
        f = self.output_layer.features(h, cond)
        return f.float() if return_hidden else self.output_layer.linear(f).float()


# ---- GPT (thunderdlm/models/gpt.py) -------------------------------------------------------------------

class GPTBlock(nn.Module):
    def __init__(self, c: ThunderDLMConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(c.n_embd, bias=c.bias)
        self.attn = SelfAttention(c.n_embd, c.n_head, bias=c.bias, use_rotary=c.pos_emb == "rotary")
        self.ln_2 = LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = MLP(c.n_embd, c.mlp_ratio, bias=c.bias)

    def forward(self, h, causal, mask, positions):
        h = h + self.attn(self.ln_1(h), causal, mask, positions)
        return h + self.mlp(self.ln_2(h))


class GPT(nn.Module):
    """h = wte[x] + positions + Linear(embed(σ)); pre-LN blocks; logits = lm_head(LN(h))."""

    def __init__(self, c: ThunderDLMConfig) -> None:
        super().__init__()
        self.cfg = c
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.max_seq_len, c.n_embd) if c.pos_emb == "learned" else None
        self.time_embed = TimestepEmbedder(c.cond_dim) if c.time_conditioning else None
        self.time_proj = nn.Linear(c.cond_dim, c.n_embd, bias=c.bias) if c.time_conditioning else None
        self.blocks = nn.ModuleList(GPTBlock(c) for _ in range(c.n_layer))
        self.ln_f = LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.out_dim, bias=False)

    @property
    def token_embedding(self) -> torch.Tensor:
        return self.wte.weight

    def forward(self, x, sigma, *, causal, inputs_embeds=None, mask=None, positions=None,
                valid=None, return_hidden=False):
        (B, L), h = input_embeddings(x, inputs_embeds, self.wte.weight)
        sigma = noise_levels(sigma, B, L, h.device)
        mask = attention_pattern(mask, valid, causal, B, L, h.device)
        positions = torch.arange(L, device=h.device) if positions is None else positions
        if self.wpe is not None:
            h = h + self.wpe(positions)
        if self.cfg.pos_emb == "sinusoidal":
            table = sinusoidal_positions(torch.arange(self.cfg.max_seq_len, device=h.device), self.cfg.n_embd)
            h = h + table[positions].to(h.dtype)
        if self.time_embed is not None:
            h = h + per_token(self.time_proj(self.time_embed(sigma)))
        for block in self.blocks:
            h = block(h, causal, mask, positions)
        h = self.ln_f(h)
        return h.float() if return_hidden else self.lm_head(h).float()


# ---- a pretrained causal LM as the backbone (thunderdlm/models/hf_adapter.py) -------------------------

class LoraLinear(nn.Module):
    """peft's LoRA Linear, unmerged: base(x) + B(A(x))·scaling (the same ops as peft, so the outputs
    are the trained run's to the last bit, where merging W + s·BA would round differently)."""

    def __init__(self, base: nn.Linear, rank: int, scaling: float) -> None:
        super().__init__()
        self.base_layer, self.scaling = base, scaling
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, rank, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(rank, base.out_features, bias=False)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        return result + self.lora_B["default"](self.lora_A["default"](x)) * self.scaling


class PeftLayout(nn.Module):
    """Holds the causal LM as ``base_model.model`` (peft's ``PeftModel`` layout, so a LoRA run's
    weights keep their keys) and wraps the ``modules`` LoRA adapted."""

    def __init__(self, causal: nn.Module, modules: list[str], rank: int, scaling: float) -> None:
        super().__init__()
        self.base_model = nn.Module()
        self.base_model.model = causal
        for name in modules:
            parent, _, leaf = name.rpartition(".")
            owner = causal.get_submodule(parent) if parent else causal
            setattr(owner, leaf, LoraLinear(getattr(owner, leaf), rank, scaling))


class HFDenoiser(nn.Module):
    """The causal LM run bidirectionally (is_causal=False), with a zero-initialised time injection
    (add: + T(σ) on the input embeddings; film: h_l (1 + s_l) + b_l before each decoder block), the
    LM head (or a new head when the output is not the vocabulary) and the optional logit shift.
    A LoRA run keeps its adapters unmerged (``config.lora``: rank, scaling, the adapted modules)."""

    def __init__(self, c: ThunderDLMConfig) -> None:
        super().__init__()
        self.cfg = c
        lm_cfg = dict(c.lm_config)
        lm_cfg.pop("architectures", None)
        inner = AutoConfig.for_model(**lm_cfg)
        inner.is_causal, inner.use_cache = False, False
        causal = AutoModelForCausalLM.from_config(inner, attn_implementation="sdpa")
        if c.lora:
            self.lm = PeftLayout(causal, c.lora["modules"], c.lora["rank"], c.lora["scaling"])
        else:
            self.lm = causal
        blocks = next(getattr(self.causal_lm.base_model, n) for n in ("layers", "h")
                      if isinstance(getattr(self.causal_lm.base_model, n, None), nn.ModuleList))
        self.n_layers = len(blocks)
        D = int(self.causal_lm.get_input_embeddings().weight.shape[1])
        self._hidden, self._film = D, None
        tc = c.time_conditioning
        self.time_embed = TimestepEmbedder(c.cond_dim) if tc else None
        self.time_add = zero_linear(c.cond_dim, D) if tc and c.time_injection == "add" else None
        self.time_film = zero_linear(c.cond_dim, 2 * D * self.n_layers) if tc and c.time_injection == "film" else None
        self.head = None if c.out_dim == c.vocab_size else zero_linear(D, c.out_dim)
        if self.time_film is not None:
            for i, block in enumerate(blocks):
                block.register_forward_pre_hook(self._film_hook(i), with_kwargs=True)

    @property
    def causal_lm(self) -> nn.Module:
        """The ``*ForCausalLM`` (LoRA layers, if any, inside it)."""
        return self.lm.base_model.model if isinstance(self.lm, PeftLayout) else self.lm

    @property
    def token_embedding(self) -> torch.Tensor:
        return self.causal_lm.get_input_embeddings().weight

    def forward(self, x, sigma, *, causal, inputs_embeds=None, mask=None, positions=None,
                valid=None, return_hidden=False):
        (B, L), h = input_embeddings(x, inputs_embeds, self.token_embedding)
        mask = attention_pattern(mask, valid, causal, B, L, h.device)
        if self.time_embed is not None:
            cond = self.time_embed(noise_levels(sigma, B, L, h.device))            # (B, [L,] C)
            if self.time_add is not None:
                h = h + per_token(self.time_add(cond))
            else:
                film = per_token(self.time_film(cond))
                self._film = film.view(*film.shape[:2], self.n_layers, 2, self._hidden)
        kwargs: dict = {"use_cache": False}
        if mask is None and not causal:
            kwargs["is_causal"] = False
        else:
            allowed = mask if mask is not None else torch.ones(L, L, dtype=torch.bool, device=h.device).tril()
            add = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device)
            add = add.masked_fill(~allowed, torch.finfo(h.dtype).min)
            kwargs["attention_mask"] = add.expand(B, 1, L, L)
        if positions is not None:
            kwargs["position_ids"] = positions[None].expand(B, -1)
        try:
            f = self.causal_lm.base_model(inputs_embeds=h, **kwargs).last_hidden_state
        finally:
            self._film = None
        if return_hidden:
            return f.float()
        if self.head is not None:
            return self.head(f).float()
        logits = self.causal_lm.get_output_embeddings()(f)[..., : self.cfg.vocab_size]
        if self.cfg.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits.float()

    def _film_hook(self, i: int):
        def hook(module, args, kwargs):
            if self._film is None:
                return None
            scale, shift = self._film[:, :, i, 0], self._film[:, :, i, 1]
            if args:
                return (args[0] * (1 + scale) + shift, *args[1:]), kwargs
            kwargs["hidden_states"] = kwargs["hidden_states"] * (1 + scale) + shift
            return args, kwargs
        return hook


BACKBONES = {"ddit": DDiT, "gpt": GPT, "hf": HFDenoiser}


# ---- process networks around the backbone -------------------------------------------------------------

class TimeHistory(nn.Module):
    """The training-time importance histogram of embedding diffusion (kept so the weights file is
    the whole thunderdlm network; unused by the forward)."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.register_buffer("m2", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(bins, dtype=torch.float64))


class EmbeddingDenoiser(nn.Module):
    """Embedding diffusion (processes/embedding/network.py): h0 = c·(W_in z + W_sc x̂_sc)
    [+ p(v)·E]; out = backbone(inputs_embeds=h0, σ = 1000·t): latents (B, L, d) or logits (B, L, V).
    ``latents()`` gives the vocabulary's clean latents e_v = LN₀(P·E_v) (rounding)."""

    def __init__(self, c: ThunderDLMConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone, self.input_scale, d = backbone, c.input_scale, c.latent_dim
        D = backbone.token_embedding.shape[1]
        self.proj = nn.Linear(D, d, bias=False) if c.bridge else None
        self.in_proj = nn.Linear(d, D)
        self.sc_proj = zero_linear(d, D)
        self.anchor_proj = nn.Linear(d, c.anchor_dim) if c.anchor_dim else None
        self.rounding_bias = nn.Parameter(torch.zeros(c.vocab_size)) if c.rounding_bias else None
        self.time_sampler = TimeHistory(c.time_bins) if c.time_bins else None
        self.vocab_size = c.vocab_size

    def latents(self) -> torch.Tensor:
        e = self.backbone.token_embedding[: self.vocab_size]
        return e if self.proj is None else F.layer_norm(self.proj(e), (self.proj.out_features,))

    def forward(self, z, t, x_sc=None, token_probs=None, valid=None):
        if x_sc is None:
            x_sc = torch.zeros_like(z)
        h = self.input_scale * (self.in_proj(z) + self.sc_proj(x_sc))               # (B, L, D)
        if token_probs is not None:
            source = self.backbone.token_embedding[: self.vocab_size]
            h = h + token_probs.to(source.dtype) @ source
        return self.backbone(None, 1000.0 * t, causal=self.backbone.cfg.causal, inputs_embeds=h, valid=valid)


class SinusoidalPosEmb(nn.Module):
    """(N,) -> (N, dim) = [sin(x f_i), cos(x f_i)], f_i = θ^{-i/(dim/2 - 1)}."""

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.theta = dim, theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(self.theta) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=x.device, dtype=torch.float32) * -scale)
        arg = x.float()[..., None] * freqs
        return torch.cat((arg.sin(), arg.cos()), dim=-1)


class DiffusionForcingNet(nn.Module):
    """Diffusion forcing (processes/forcing/network.py): h = c·(x_k + emb(k)) or c·MLP([x_k, emb(k)]);
    out = causal GPT(inputs_embeds=h, σ = k) (B, L, D). ``token_table()``: LN(wte[:V]) (V, D)."""

    def __init__(self, c: ThunderDLMConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone, self.input_scale = backbone, c.input_scale
        self.vocab_size = c.decode_vocab_size
        D = c.n_embd
        if c.level_embedding == "sinusoidal":
            self.level_embed, self.level_mlp = SinusoidalPosEmb(D), None
        else:
            k_dim = D // 2 if (D // 2) % 2 == 0 else D // 2 + 1
            self.level_embed = SinusoidalPosEmb(k_dim)
            self.level_mlp = nn.Sequential(nn.Linear(D + k_dim, D), nn.ReLU(), nn.Linear(D, D))

    def token_table(self) -> torch.Tensor:
        table = self.backbone.token_embedding[: self.vocab_size].float()
        return F.layer_norm(table, (table.shape[-1],))

    def forward(self, x, level, valid=None):
        k = level.float()
        if self.level_mlp is None:
            h = x + self.level_embed(k)
        else:
            h = self.level_mlp(torch.cat([x, self.level_embed(k).to(x.dtype)], dim=-1))
        if self.input_scale != 1.0:
            h = h * self.input_scale
        return self.backbone(None, k, causal=True, inputs_embeds=h, valid=valid)


# ---- the transformers model ---------------------------------------------------------------------------

class ThunderDLMModel(PreTrainedModel):
    """``network`` is the thunderdlm network (same state-dict keys under ``network.``)."""

    config_class = ThunderDLMConfig
    base_model_prefix = "thunderdlm"
    main_input_name = "input_ids"
    _no_split_modules: list[str] = []

    def __init__(self, config: ThunderDLMConfig) -> None:
        super().__init__(config)
        backbone = BACKBONES[config.backbone](config)
        if config.wrapper == "embedding":
            self.network = EmbeddingDenoiser(config, backbone)
        elif config.wrapper == "forcing":
            self.network = DiffusionForcingNet(config, backbone)
        else:
            self.network = backbone
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Every weight comes from model.safetensors; nothing is initialised here."""

    def forward(self, input_ids: torch.Tensor | None = None, timesteps: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, causal: bool | None = None,
                self_conditioning: torch.Tensor | None = None, token_probs: torch.Tensor | None = None,
                return_dict: bool = True, **kwargs) -> ThunderDLMOutput:
        """See the module docstring; returns ``ThunderDLMOutput(logits)``."""
        valid, pattern = None, None
        if attention_mask is not None:
            if attention_mask.dim() == 2:                 # (B, L) padding, 1 / True on real tokens
                valid = attention_mask.bool()
            elif attention_mask.dim() == 4:
                pattern = attention_mask.bool()
            else:
                raise ValueError("attention_mask must be (B, L) padding or (B|1, 1, L, L) bool")
        positions = position_ids.reshape(-1) if position_ids is not None else None
        c = self.config
        if c.wrapper == "embedding":
            out = self.network(inputs_embeds, timesteps, self_conditioning, token_probs, valid)
        elif c.wrapper == "forcing":
            out = self.network(inputs_embeds, timesteps, valid)
        else:
            out = self.network(input_ids, timesteps, causal=c.causal if causal is None else bool(causal),
                               inputs_embeds=inputs_embeds, mask=pattern, positions=positions, valid=valid)
        return ThunderDLMOutput(logits=out) if return_dict else (out,)

    # ---- sampling (masked and block diffusion) ------------------------------------------------------

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, max_new_tokens: int = 64, steps: int = 64,
                 block_length: int | None = None, temperature: float = 1.0,
                 remasking: str = "low_confidence", generator: torch.Generator | None = None,
                 **kwargs) -> torch.Tensor:
        """Masked diffusion sampling (LLaDA): ``input_ids`` (B, P) prompt (None: no prompt) followed
        by ``max_new_tokens`` masks, decoded block by block (``block_length``, default the whole
        span; a block-diffusion model's own blocks on its absolute grid, the first one ending at the
        next multiple of the block size), ``steps`` network calls shared out over the blocks in
        proportion to their sizes (at least one each for block diffusion); call j of a block's S runs at t = 1 - j/S (σ(t) for a
        time-conditioned model) and commits LLaDA's share of the block's masked positions (n // S,
        the remainder one each in the first calls): those whose drawn token is most probable
        (``remasking="low_confidence"``) or chosen at random (``"random"``). ``temperature`` 0
        takes the argmax. Returns (B, P + max_new_tokens) ids. (thunderdlm's sampler follows the
        same schedule: greedy samples of a masked or block model are equal token for token, tested.)

        Only masked and block models sample this way; other processes (uniform, score entropy,
        embedding, forcing, autoregressive) have their own reverse process: ``thunderdlm sample``."""
        c = self.config
        if c.process not in ("masked", "block") or c.mask_token_id is None or c.wrapper != "none":
            raise ValueError(f"generate() samples masked / block diffusion models; this one is a "
                             f"{c.process!r} model: sample it with `thunderdlm sample <this folder>`")
        if c.sigma_conditioning and c.schedule != "loglinear":
            raise ValueError(f"generate() computes σ(t) for the log-linear schedule; this model was "
                             f"trained on {c.schedule!r}: sample it with `thunderdlm sample`")
        if remasking not in ("low_confidence", "random"):
            raise ValueError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
        device = self.network.token_embedding.device
        prompt = (torch.zeros(1, 0, dtype=torch.long, device=device) if input_ids is None
                  else input_ids.to(device))
        B, P = prompt.shape
        L = P + max_new_tokens
        if max_new_tokens < 1 or L > c.max_seq_len:
            raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) must be within the "
                             f"context of {c.max_seq_len} tokens, with at least one new token")
        mask = c.mask_token_id
        x = torch.cat([prompt, torch.full((B, max_new_tokens), mask, device=device)], dim=1)
        pattern = None
        if c.process == "block":                      # block-causal on the grid the model was trained on
            g = c.block_size
            b = torch.arange(L, device=device) // g
            pattern = (b[None, :] <= b[:, None])[None, None]                    # (1, 1, L, L)
            if block_length not in (None, g):
                raise ValueError(f"a block-diffusion model decodes its own blocks of {g} tokens; "
                                 f"block_length={block_length} does not apply")
            # decoded on that absolute grid: the first block ends at the next multiple of g (a
            # prompt of P tokens fills its start), so a block never holds masks of two grid blocks
            cuts = [P] + list(range((P // g + 1) * g, L, g)) + [L]
            starts, sizes = cuts[:-1], [hi - lo for lo, hi in zip(cuts[:-1], cuts[1:])]
            steps = max(steps, len(sizes))            # at least one call per block, as thunderdlm
        else:
            block_length = block_length or max_new_tokens
            starts = list(range(P, L, block_length))
            sizes = [min(start + block_length, L) - start for start in starts]
        for start, size, spb in zip(starts, sizes, split_steps(steps, sizes)):
            end = start + size
            for i in range(spb):
                hidden = x[:, :end] == mask                                       # (B, end)
                hidden[:, :start] = False
                if not hidden.any():
                    break
                left = hidden.sum(dim=1)                                          # (B,)
                k = torch.ceil(left / (spb - i)).long()                           # LLaDA's share
                t = torch.full((B,), 1.0 - i / spb, device=device)                # the time grid
                logits = self(x, timesteps=self._sigma(t), attention_mask=pattern).logits[:, :end]
                logits[..., mask] = -math.inf                                     # never predict M
                x[:, :end] = self._commit(x[:, :end], logits, hidden, k, temperature, remasking, generator)
        return x

    def _sigma(self, t: torch.Tensor) -> torch.Tensor | None:
        """σ(t) = -log α_t of the log-linear schedule (α_t = 1 - (1 - ε) t), clamped to [0, -log 1e-3]
        as in training; None for a time-agnostic model."""
        if not self.config.sigma_conditioning:
            return None
        alpha = (1 - (1 - self.config.schedule_eps) * t).clamp(min=1e-30)
        return (-torch.log(alpha)).clamp(0.0, -math.log(1e-3))

    @staticmethod
    def _commit(x, logits, hidden, k, temperature, remasking, generator):
        """Draw a token at every hidden position, keep the k per row with the highest score."""
        if temperature == 0:
            draw = logits.argmax(-1)
            probs = logits.softmax(-1)
        else:
            probs = (logits / temperature).softmax(-1)                            # (B, n, V)
            draw = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
        if remasking == "low_confidence":
            score = probs.gather(-1, draw[..., None])[..., 0]
        else:
            score = torch.rand(draw.shape, device=draw.device, generator=generator)
        score = score.masked_fill(~hidden, -1.0)
        order = score.argsort(dim=1, descending=True)
        rank = order.argsort(dim=1)                                               # rank of each position
        keep = hidden & (rank < k[:, None])
        return torch.where(keep, draw, x)


def split_steps(steps: int, sizes: list[int]) -> list[int]:
    """Network calls per block in proportion to the blocks' sizes, at least one each, summing to
    ``steps`` (remainders to the earliest of the largest shares): thunderdlm's ``split_steps``."""
    n = len(sizes)
    if steps < n:
        raise ValueError(f"steps={steps} is fewer than the {n} blocks to decode")
    quota = [steps * s / sum(sizes) for s in sizes]
    out = [max(1, int(q)) for q in quota]
    while sum(out) < steps:
        i = max(range(n), key=lambda b: (quota[b] - out[b], -b))
        out[i] += 1
    while sum(out) > steps:
        i = max((b for b in range(n) if out[b] > 1), key=lambda b: (out[b] - quota[b], -b))
        out[i] -= 1
    return out


class ThunderDLMForMaskedLM(ThunderDLMModel):
    """The same network under the masked-LM auto class (masked diffusion predicts the masked tokens)."""
