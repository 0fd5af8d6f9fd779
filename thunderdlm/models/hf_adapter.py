"""``HFDenoiser``: a pretrained causal LM (Llama / Mistral / Qwen / Phi / GPT-2) as a bidirectional
denoiser that meets the :class:`Backbone` contract (``model.name: hf``), issue 7.

::

    h0      = E[x] (+ T(σ) with time_injection=add)          (B, L, D)  E: the LM's own token table
    h_l     = block_l(h_{l-1} (1 + s_l(σ)) + b_l(σ))           film: per-layer scale/shift of the
                                                               block input (identity at init)
    f       = final_norm(h_n)                                  (B, L, D)  ``return_hidden``
    logits  = lm_head(f)[..., :V]                              (B, L, V)  the LM head reused when the
                                                               output is the vocabulary, else a new
                                                               zero-initialised Linear(D, out_dim)
                                                               (an untied LM head is then frozen)
    shift   : logits_i <- logits_{i-1} (i >= 1)                DiffuLLaMA / Dream: the causal LM
                                                               predicted token i at position i-1

- T, s_l, b_l come from ``TimestepEmbedder(σ)`` through zero-initialised linears, so at step 0
  the adapter computes exactly the pretrained model (with the attention direction asked for).
- Attention: ``causal=False`` runs the decoder with ``config.is_causal = False`` and
  ``is_causal=False`` per call (no mask tensor: SDPA keeps its fused kernels). ``causal=True``
  passes an explicit additive causal mask, which reproduces the HF model's own logits exactly.
  Annealing (``attn_anneal_steps``, DiffuLLaMA): while training, position i also sees each later
  position j with probability r = step / anneal_steps (one random pattern per step, shared by the
  batch and the heads), r reaching 1 (full attention) at the end of the annealing.
- KV cache (``new_kv_cache()``, an ``HFKVCache`` over the decoder's ``DynamicCache``): a forward
  with ``kv_cache`` runs only the n new tokens (``use_cache=True``, the additive mask (n, P + n) of
  ``attn_mask`` or of the causal rule, ``position_ids`` P..P+n−1 unless given); the time
  injection is per token for the new positions. Block diffusion decodes with it (exact: the clean
  prefix never sees later blocks). The shifted head cannot be computed chunk by chunk (position P
  reads P−1's output), so a cached call asks for ``shift_logits=False``, as does block diffusion's
  x_t ⊕ x0 training input, and the process shifts (``processes/block/process.py``).
- Vocabulary: a process that adds tokens (the masked process's mask) gets rows appended to the
  table (``resize_token_embeddings``, mean-initialised); a tokenizer smaller than the model's padded
  table uses the first V rows and logits.
- Freezing (``freeze_layers``) and LoRA (``lora_rank``, via ``peft``) apply to decoder layers: LoRA
  wraps ``lora_targets`` of the unfrozen layers only, and everything outside the pretrained model
  (time embedding, new heads) stays trainable. ``merge_lora()`` folds the adapters into the weights.
"""
from __future__ import annotations

import contextlib
import inspect
import warnings

import torch
from torch import nn

from thunderdlm.errors import ConfigError
from thunderdlm.models.attention_mask import PiecewiseMask
from thunderdlm.models.base import Backbone
from thunderdlm.models.config import ModelConfig, freeze_range
from thunderdlm.models.hf_io import load_causal_lm
from thunderdlm.models.hf_kv_cache import HFKVCache
from thunderdlm.models.layers import TimestepEmbedder, per_token, zero_linear


def decoder_layers(base: nn.Module) -> nn.ModuleList:
    """The block list of a decoder (``layers`` in Llama/Qwen/Phi, ``h`` in GPT-2)."""
    for name in ("layers", "h"):
        blocks = getattr(base, name, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise ConfigError(f"config field 'model.path': cannot find the decoder blocks of "
                      f"{type(base).__name__} (no 'layers' or 'h' ModuleList)")


class HFDenoiser(Backbone):
    """A Hugging Face causal LM behind the backbone contract (see the module docstring)."""

    supports_kv_cache = True

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_seq_len: int,
                 out_dim: int | None = None, lm: nn.Module | None = None) -> None:
        super().__init__(cfg, vocab_size, max_seq_len, out_dim)
        lm = lm if lm is not None else load_causal_lm(cfg.path, cfg.attn_implementation)
        hf_cfg = lm.config
        n_pos = getattr(hf_cfg, "max_position_embeddings", None) or getattr(hf_cfg, "n_positions", None)
        if n_pos is not None and max_seq_len > n_pos:
            raise ConfigError(f"config field 'data.seq_len': {max_seq_len} exceeds the pretrained "
                              f"model's {n_pos} positions")
        if vocab_size > lm.get_input_embeddings().weight.shape[0]:
            with _quiet_transformers():   # its notice of the mean initialisation, on every load
                lm.resize_token_embeddings(vocab_size, mean_resizing=True)
        hf_cfg.is_causal = False              # bidirectional by default (see module docstring)
        hf_cfg.use_cache = False
        blocks = decoder_layers(lm.base_model)
        self.n_layers = len(blocks)
        self._hidden = int(lm.get_input_embeddings().weight.shape[1])
        self.anneal_ratio = 1.0 if cfg.attn_anneal_steps == 0 else 0.0
        self._film: torch.Tensor | None = None

        # timestep conditioning: zero-initialised, so the pretrained function is kept at init
        D, C = self._hidden, cfg.cond_dim
        self.time_embed = TimestepEmbedder(C) if cfg.time_conditioning else None
        self.time_add = zero_linear(C, D) if self.time_embed is not None and cfg.time_injection == "add" else None
        self.time_film = (zero_linear(C, 2 * D * self.n_layers)
                          if self.time_embed is not None and cfg.time_injection == "film" else None)
        # output: the LM head when the output is the vocabulary, else a fresh zero-initialised head
        self.head = None if self.out_dim == vocab_size else zero_linear(D, self.out_dim)

        self.frozen = freeze_range(cfg.freeze_layers, self.n_layers)
        for i in self.frozen:
            blocks[i].requires_grad_(False)
        if cfg.freeze_embeddings:
            lm.get_input_embeddings().requires_grad_(False)
        lm_head = lm.get_output_embeddings()
        if self.head is not None and lm_head.weight is not lm.get_input_embeddings().weight:
            lm_head.requires_grad_(False)     # an untied LM head is unused: DDP needs none such
        if cfg.gradient_checkpointing:
            _enable_checkpointing(lm, {"use_reentrant": False, "context_fn": self._recompute_context})
        self.lm = self._with_lora(lm, cfg, blocks) if cfg.lora_rank > 0 else lm
        if self.time_film is not None:
            for i, block in enumerate(blocks):
                block.register_forward_pre_hook(self._film_hook(i), with_kwargs=True)

    # ---- construction helpers -----------------------------------------------------------------
    def _with_lora(self, lm: nn.Module, cfg: ModelConfig, blocks: nn.ModuleList) -> nn.Module:
        """peft LoRA on ``lora_targets`` of the unfrozen layers; other trainable flags restored."""
        from peft import LoraConfig, get_peft_model

        names = {n for n, _ in lm.named_modules()}
        missing = [t for t in cfg.lora_targets if not any(n.endswith("." + t) for n in names)]
        if missing:
            raise ConfigError(f"config field 'model.lora_targets': no module named {missing} in "
                              f"{type(lm).__name__}")
        trainable = [i for i in range(self.n_layers) if i not in self.frozen]
        if not trainable:
            raise ConfigError("config field 'model.freeze_layers': every layer is frozen, LoRA has "
                              "nothing to adapt")
        # outside the blocks (token table, final norm...), what trains now keeps training under LoRA
        keep = {id(p) for p in lm.parameters() if p.requires_grad} - {id(p) for p in blocks.parameters()}
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                          lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_targets),
                          layers_to_transform=trainable, bias="none")
        with warnings.catch_warnings():   # peft calls a transformers property deprecated in 5.x
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(lm, lora)
        # peft freezes the whole base model; LoRA replaces full fine-tuning of the block weights,
        # but the token table (new mask row) and norms outside the blocks keep training unless frozen
        for p in model.get_base_model().parameters():
            if id(p) in keep:
                p.requires_grad_(True)
        return model

    @property
    def causal_lm(self) -> nn.Module:
        """The underlying ``*ForCausalLM`` (LoRA layers, if any, are injected in place)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def merge_lora(self) -> None:
        """Fold the LoRA updates into the base weights (export); a no-op without LoRA."""
        if hasattr(self.lm, "merge_and_unload"):
            self.lm = self.lm.merge_and_unload()

    # ---- contract ---------------------------------------------------------------------------
    @property
    def token_embedding(self) -> torch.Tensor:
        return self.causal_lm.get_input_embeddings().weight

    @property
    def n_embd(self) -> int:
        return self._hidden

    def _embedding_parameters(self) -> list[nn.Parameter]:
        params = [self.causal_lm.get_input_embeddings().weight]
        wpe = getattr(self.causal_lm.base_model, "wpe", None)          # GPT-2 learned positions
        if wpe is not None:
            params.append(wpe.weight)
        return params

    def on_train_step(self, step: int) -> None:
        """Attention annealing: the share of future positions visible at ``step``."""
        if self.cfg.attn_anneal_steps > 0:
            self.anneal_ratio = min(1.0, step / self.cfg.attn_anneal_steps)

    def forward(self, x: torch.Tensor | None, sigma: torch.Tensor | None = None, *,
                causal: bool | None = None, kv_cache: HFKVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, return_hidden: bool = False,
                attn_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None,
                shift_logits: bool | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L) ids, sigma: (B,) | (B, L) | None -> (B, L, out_dim) float32.

        ``attn_mask`` (L, L) / (B, 1, L, L) bool and ``positions`` (L,): see ``models/base.py``
        (passed to the decoder as an additive 4-D mask and ``position_ids``). With ``kv_cache``
        (``new_kv_cache()``) x holds the n tokens after the P cached ones, ``attn_mask`` is
        (n, P + n) (default: causal) and ``positions`` default to P..P+n−1. ``shift_logits``
        (default ``cfg.shift_logits``) turns the shift of the head on or off for this call: a
        caller whose input is not one left-to-right sequence (block diffusion's x_t ⊕ x0, a chunk
        after a cache) asks for each position's own output and shifts it itself. ``valid``
        (B, P + L) bool: the key-padding mask of ``models/base.py``."""
        shift = self.cfg.shift_logits if shift_logits is None else bool(shift_logits)
        x, h = self._input_embeddings(x, inputs_embeds, self.token_embedding,
                                      self._structure_limit(positions))     # (B, L), (B, L, D)
        causal = self._resolve_causal(causal)
        P = 0
        if kv_cache is not None:
            self._check_hf_cache(x, causal, kv_cache, attn_mask, shift)
            P = kv_cache.length
        self._check_structure(x.shape[1], attn_mask, positions, P)
        attn_mask = self._with_padding(attn_mask, valid, causal, *x.shape, P, h.device)
        if self.time_embed is not None:
            c = self.time_embed(self._prepare_sigma(x, sigma))                  # (B, [L,] C)
            if self.time_add is not None:
                h = h + per_token(self.time_add(c))
            else:  # (B, [L,] n_layers * 2D) -> (B, [1|L], n_layers, 2, D)
                film = per_token(self.time_film(c))
                self._film = film.view(*film.shape[:2], self.n_layers, 2, self._hidden)
        try:
            f = self._decode(h, causal, attn_mask, positions, kv_cache)
        finally:
            self._film = None
        if return_hidden:
            return f.float()
        if self.head is not None:
            return self.head(f).float()
        logits = self.causal_lm.get_output_embeddings()(f)[..., :self.vocab_size]
        if shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits.float()

    @property
    def shifted_head(self) -> bool:
        """True when position i reads the LM head at i−1 (``model.shift_logits``)."""
        return bool(self.cfg.shift_logits)

    def new_kv_cache(self, max_len: int | None = None) -> HFKVCache:
        """An empty cache over the decoder's own ``DynamicCache``, room for ``max_len`` (default
        max_seq_len) positions."""
        return HFKVCache(self.n_layers, min(max_len or self.max_seq_len, self.max_seq_len),
                         self.causal_lm.config)

    def _decode(self, h: torch.Tensor, causal: bool, attn_mask, positions: torch.Tensor | None,
                kv_cache: HFKVCache | None) -> torch.Tensor:
        """The decoder's final features (B, L, D) from the input embeddings h (B, L, D)."""
        if isinstance(attn_mask, PiecewiseMask):
            attn_mask = attn_mask.dense()       # the decoder takes one (additive) mask tensor
        kwargs: dict = {"use_cache": kv_cache is not None}
        if kv_cache is not None:                # new queries P..P+n−1 over keys 0..P+n−1
            P, n = kv_cache.length, h.shape[1]
            if attn_mask is None:
                q = torch.arange(P, P + n, device=h.device)
                attn_mask = torch.arange(P + n, device=h.device)[None, :] <= q[:, None]
            if positions is None:
                positions = torch.arange(P, P + n, device=h.device)
            kwargs[self._cache_kwarg()] = kv_cache.dynamic
        kwargs.update(self._attention(h, causal) if attn_mask is None
                      else self._explicit_mask(h, attn_mask))
        if positions is not None:
            kwargs["position_ids"] = (positions[None].expand(h.shape[0], -1) if positions.dim() == 1
                                      else positions)                   # (B, L): one row each
        return self.causal_lm.base_model(inputs_embeds=h, **kwargs).last_hidden_state

    def _cache_kwarg(self) -> str:
        """The decoder's name for the cache argument (``cache`` since transformers 5.x, before
        that ``past_key_values``)."""
        params = inspect.signature(self.causal_lm.base_model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def _check_hf_cache(self, x: torch.Tensor, causal: bool, kv_cache, attn_mask,
                        shift: bool) -> None:
        """A cache needs causal attention or an explicit mask, an unshifted head, and room."""
        if not isinstance(kv_cache, HFKVCache):
            raise ValueError(f"HFDenoiser needs its own KV cache (model.new_kv_cache()), got "
                             f"{type(kv_cache).__name__}")
        if not causal and attn_mask is None:
            raise ValueError("HFDenoiser: a KV cache needs causal attention (pass causal=True or "
                             "set model.causal) or an explicit attn_mask")
        if shift:
            raise ValueError("HFDenoiser: the shifted head reads the previous position's output, "
                             "which a chunk after a KV cache does not hold; call with "
                             "shift_logits=False and shift across chunks (block diffusion does)")
        if kv_cache.n_layer != self.n_layers:
            raise ValueError(f"the cache has {kv_cache.n_layer} layers but the decoder has "
                             f"{self.n_layers}; make it with model.new_kv_cache()")
        end = kv_cache.length + x.shape[1]
        if end > self.max_seq_len:
            raise ValueError(f"positions up to {end} (cache {kv_cache.length} + {x.shape[1]} new) "
                             f"exceed max_seq_len={self.max_seq_len} of this HFDenoiser")
        kv_cache.check_room(x.shape[0], x.shape[1])

    # ---- attention and FiLM -----------------------------------------------------------------
    def _attention(self, h: torch.Tensor, causal: bool) -> dict:
        """Keyword arguments that set the attention pattern of one decoder call."""
        L = h.shape[1]
        if not causal and (self.anneal_ratio >= 1.0 or not self.training):
            return {"is_causal": False}
        allowed = torch.ones(L, L, dtype=torch.bool, device=h.device).tril()
        if not causal:   # annealing: the causal pattern plus a random share of the future
            allowed |= torch.rand(L, L, device=h.device) < self.anneal_ratio
        mask = torch.zeros(L, L, dtype=h.dtype, device=h.device)
        mask = mask.masked_fill(~allowed, torch.finfo(h.dtype).min)
        return {"attention_mask": mask.expand(h.shape[0], 1, L, L)}

    @staticmethod
    def _explicit_mask(h: torch.Tensor, allowed: torch.Tensor) -> dict:
        """A boolean pattern (L, K) or (B, 1, L, K) as the decoder's additive 4-D mask (K = L, or
        P + L after P cached positions)."""
        L, K = h.shape[1], allowed.shape[-1]
        mask = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device)
        mask = mask.masked_fill(~allowed, torch.finfo(h.dtype).min)
        return {"attention_mask": mask.expand(h.shape[0], 1, L, K)}

    def _recompute_context(self):
        """``context_fn`` of ``torch.utils.checkpoint``: a layer recomputed in the backward pass sees
        the FiLM values of its own forward. transformers versions that checkpoint a layer's
        ``__call__`` rerun the FiLM hook then, after ``forward`` has cleared ``self._film``."""
        film = self._film

        @contextlib.contextmanager
        def restore():
            saved, self._film = self._film, film
            try:
                yield
            finally:
                self._film = saved
        return contextlib.nullcontext(), restore()

    def _film_hook(self, i: int):
        def hook(module, args, kwargs):
            if self._film is None:
                return None
            scale, shift = self._film[:, :, i, 0], self._film[:, :, i, 1]      # (B, 1|L, D)
            if args:
                return (args[0] * (1 + scale) + shift, *args[1:]), kwargs
            kwargs["hidden_states"] = kwargs["hidden_states"] * (1 + scale) + shift
            return args, kwargs
        return hook


def _enable_checkpointing(lm: nn.Module, kwargs: dict) -> None:
    """Activation checkpointing of the decoder layers (``activation_checkpointing_enable`` where
    transformers has it; its older name warns that it is deprecated)."""
    enable = getattr(lm, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' logger at error level inside the block (restored after)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
