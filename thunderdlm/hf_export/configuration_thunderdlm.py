"""``ThunderDLMConfig``: the transformers config of a thunderdlm network exported by
``thunderdlm export`` (``AutoConfig.from_pretrained(DIR, trust_remote_code=True)``).

Self-contained: it imports only transformers, because ``thunderdlm export`` copies it into the
export folder beside ``modeling_thunderdlm.py``, where thunderdlm need not be installed.

Fields (``backbone`` picks which of them are read):

- ``backbone``: ``ddit`` (SEDD/MDLM diffusion transformer), ``gpt`` (nanoGPT-style) or ``hf`` (a
  pretrained causal LM made a bidirectional denoiser; its own config is ``lm_config``).
- sizes of ddit / gpt: ``n_layer``, ``n_head``, ``n_embd``, ``cond_dim``, ``mlp_ratio``,
  ``max_seq_len``, ``pos_emb`` (rotary | learned | sinusoidal), ``bias``, ``tie_embeddings``.
- ``vocab_size``: rows of the token table (the tokenizer's vocabulary plus a mask / BOS row when the
  process adds one); ``out_dim``: the output width (``vocab_size`` for logits).
- ``causal``: the default attention direction; ``time_conditioning``: whether the noise level
  (``timesteps``) is embedded.
- hf: ``time_injection`` (add | film), ``shift_logits`` (position i reads the LM head at i-1),
  ``lora`` (a LoRA run's unmerged adapters: ``rank``, ``scaling`` = alpha / rank, ``modules``).
- ``wrapper``: ``none`` (the backbone alone), ``embedding`` (embedding diffusion's bridge and
  input projections around the backbone: ``latent_dim``, ``bridge``, ``head``, ``input_scale``,
  ``anchor_dim``, ``rounding_bias``, ``time_bins``) or ``forcing`` (diffusion forcing's noise-level
  embedding: ``level_embedding``, ``input_scale``, ``decode_vocab_size``).
- ``process``, ``mask_token_id``, ``block_size``: what the network was trained for;
  ``schedule``, ``schedule_eps``, ``sigma_conditioning``: the noise schedule and whether the process
  feeds σ(t) = -log α_t to the network (read by ``ThunderDLMModel.generate`` for masked / block
  models; the other sampler settings are in ``generation_config.json``).
"""
from __future__ import annotations

from transformers import PretrainedConfig


class ThunderDLMConfig(PretrainedConfig):
    model_type = "thunderdlm"

    def __init__(self, backbone: str = "ddit", vocab_size: int = 2, out_dim: int | None = None,
                 max_seq_len: int = 256, n_layer: int = 1, n_head: int = 1, n_embd: int = 32,
                 cond_dim: int = 32, mlp_ratio: int = 4, causal: bool = False,
                 time_conditioning: bool = True, pos_emb: str = "rotary", bias: bool = False,
                 tie_embeddings: bool = False, lm_config: dict | None = None,
                 time_injection: str = "add", shift_logits: bool = False, lora: dict | None = None,
                 wrapper: str = "none",
                 latent_dim: int | None = None, bridge: bool = False, head: str = "softmax",
                 input_scale: float = 1.0, anchor_dim: int | None = None, rounding_bias: bool = False,
                 time_bins: int | None = None, level_embedding: str = "sinusoidal",
                 decode_vocab_size: int | None = None, process: str = "masked",
                 mask_token_id: int | None = None, block_size: int | None = None,
                 schedule: str | None = None, schedule_eps: float = 0.0,
                 sigma_conditioning: bool = False, **kwargs):
        self.backbone = backbone
        self.vocab_size = vocab_size
        self.out_dim = vocab_size if out_dim is None else out_dim
        self.max_seq_len = max_seq_len
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.cond_dim, self.mlp_ratio = cond_dim, mlp_ratio
        self.causal, self.time_conditioning = causal, time_conditioning
        self.pos_emb, self.bias, self.tie_embeddings = pos_emb, bias, tie_embeddings
        self.lm_config = lm_config
        self.time_injection, self.shift_logits, self.lora = time_injection, shift_logits, lora
        self.wrapper = wrapper
        self.latent_dim, self.bridge, self.head = latent_dim, bridge, head
        self.input_scale, self.anchor_dim, self.rounding_bias = input_scale, anchor_dim, rounding_bias
        self.time_bins = time_bins
        self.level_embedding, self.decode_vocab_size = level_embedding, decode_vocab_size
        self.process, self.mask_token_id, self.block_size = process, mask_token_id, block_size
        self.schedule, self.schedule_eps = schedule, schedule_eps
        self.sigma_conditioning = sigma_conditioning
        kwargs.setdefault("tie_word_embeddings", False)   # ties are explicit in the weights file
        super().__init__(**kwargs)
