"""``ModelConfig``: the typed config of every from-scratch backbone (``model:`` section).

One dataclass serves both backbones; fields a backbone does not use are ignored by it and
documented as such in their help text. Validation happens in ``__post_init__`` and names the
offending field (``model.<field>``), so a YAML typo and a bad ``key=value`` override produce the
same one-line error.

Shapes used across ``models/``: ``B`` batch, ``L`` sequence length, ``D = n_embd`` model width,
``H = n_head`` heads, ``Dh = D / H`` head width, ``C = cond_dim`` conditioning width,
``V`` output vocabulary (including a mask token when the process adds one).
"""
from __future__ import annotations

import dataclasses
import difflib

from thunderdlm.config import check, param

#: Backbone names accepted by ``model.name``; must match ``thunderdlm.models.MODELS``.
MODEL_NAMES: tuple[str, ...] = ("ddit", "gpt", "hf")

#: How the ``hf`` adapter injects the noise level (``model.time_injection``).
TIME_INJECTIONS: tuple[str, ...] = ("add", "film")

#: LoRA target modules of the Llama / Qwen / Phi-3 families (``model.lora_targets`` default).
LLAMA_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                       "gate_proj", "up_proj", "down_proj")

#: Position encodings accepted by ``model.pos_emb``.
POS_EMBS: tuple[str, ...] = ("rotary", "learned", "sinusoidal")


def closest_name(name: str, options: tuple[str, ...] | list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest option, or the list of valid options."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.4)
    if match:
        return f"; did you mean '{match[0]}'?"
    return f"; valid names: {', '.join(sorted(options))}"


@dataclasses.dataclass
class ModelConfig:
    """Architecture of a backbone: from scratch (DDiT, GPT) or a pretrained causal LM (``hf``).

    The size fields (n_layer ... init_std) are those of the from-scratch backbones; the ``hf``
    adapter takes its architecture from the pretrained model and reads only ``cond_dim``,
    ``time_conditioning``, ``causal`` and the fields after ``init_std``.
    """

    name: str = param("ddit", help="backbone: 'ddit' (SEDD/MDLM diffusion transformer with adaLN), "
                                   "'gpt' (nanoGPT-style pre-LN transformer) or 'hf' (a pretrained "
                                   "causal LM made a bidirectional denoiser, model.path)",
                      choices=MODEL_NAMES)
    n_layer: int = param(4, help="number of transformer blocks")
    n_head: int = param(4, help="attention heads per block; n_embd must be divisible by it")
    n_embd: int = param(128, help="model width D (head width D / n_head must be even for rotary)")
    cond_dim: int = param(128, help="width of the timestep (noise level) conditioning vector c")
    mlp_ratio: int = param(4, help="MLP hidden width as a multiple of n_embd")
    dropout: float = param(0.0, help="dropout probability on residual branches (and GPT "
                                     "embeddings / attention), 0 <= p < 1")
    causal: bool = param(False, help="default attention direction: false = bidirectional "
                                     "(diffusion), true = causal (autoregressive)")
    time_conditioning: bool = param(True, help="build a timestep embedder. DDiT always has one "
                                               "(per SEDD) and sees sigma = 0 when this is false; "
                                               "GPT adds a time embedding to its input when true")
    pos_emb: str = param("rotary", help="position encoding: rotary | learned | sinusoidal "
                                        "(DDiT supports rotary only)", choices=POS_EMBS)
    bias: bool = param(False, help="GPT only: biases in Linear and LayerNorm layers "
                                   "(nanoGPT's bias flag)")
    tie_embeddings: bool = param(True, help="GPT only: share the token embedding and the "
                                            "output projection (lm_head)")
    init_std: float = param(0.02, help="GPT only: std of the normal init of Linear and "
                                       "Embedding weights")
    # ---- the hf adapter (models/hf_adapter.py) ----------------------------------------------
    path: str = param("", help="hf only: a local Hugging Face model folder (save_pretrained / "
                               "`thunderdlm convert`) or a .gguf file; never downloaded")
    time_injection: str = param("add", help="hf only, with time_conditioning: 'add' a time "
                                            "embedding to the input embeddings, or 'film' "
                                            "(per-layer scale/shift of each block's input)",
                                choices=TIME_INJECTIONS)
    freeze_layers: str = param("", help="hf only: decoder layers to freeze, 'a:b' (layers a..b-1), "
                                        "'half' (the lower half, note 001) or '' (none)")
    freeze_embeddings: bool = param(False, help="hf only: freeze the token table (and a tied LM "
                                                "head); rows added for new tokens then stay at "
                                                "their mean initialisation")
    lora_rank: int = param(0, help="hf only: LoRA rank r on the trainable layers via peft "
                                   "(0 = full fine-tuning of the unfrozen layers; note 001 asks "
                                   "r >= 256 on large models)")
    lora_alpha: float = param(0.0, help="hf only: LoRA alpha (0 = equal to lora_rank: scale 1)")
    lora_dropout: float = param(0.0, help="hf only: dropout on the LoRA branch")
    lora_targets: list[str] = param(default_factory=lambda: list(LLAMA_LORA_TARGETS),
                                    help="hf only: module names LoRA wraps (Llama/Qwen defaults; "
                                         "GPT-2: c_attn, c_proj, c_fc; Phi-3: qkv_proj, o_proj, "
                                         "gate_up_proj, down_proj)")
    gradient_checkpointing: bool = param(False, help="hf only: recompute each decoder layer in "
                                                     "the backward pass (less memory, ~30% slower)")
    shift_logits: bool = param(False, help="hf only: DiffuLLaMA/Dream logit shift: position i "
                                           "reads the LM head at i-1 (where the causal model "
                                           "predicted token i); position 0 keeps its own")
    attn_anneal_steps: int = param(0, help="hf only: anneal attention from causal to full over "
                                           "this many training steps (DiffuLLaMA); 0 = full "
                                           "bidirectional from the start")
    attn_implementation: str = param("sdpa", help="hf only: transformers attention kernel",
                                     choices=("sdpa", "eager"))

    def __post_init__(self) -> None:
        check(self.name in MODEL_NAMES, "model.name",
              f"unknown backbone {self.name!r}{closest_name(str(self.name), MODEL_NAMES)}")
        self._check_sizes()
        check(0.0 <= self.dropout < 1.0, "model.dropout",
              f"must satisfy 0 <= dropout < 1, got {self.dropout}")
        check(self.pos_emb in POS_EMBS, "model.pos_emb",
              f"{self.pos_emb!r} is not one of {list(POS_EMBS)}")
        check(self.name != "ddit" or self.pos_emb == "rotary", "model.pos_emb",
              f"DDiT supports rotary positions only, got {self.pos_emb!r}; "
              "set model.pos_emb=rotary or model.name=gpt")
        check(self.init_std > 0.0, "model.init_std", f"must be > 0, got {self.init_std}")
        self._check_hf()

    def _check_hf(self) -> None:
        if self.name != "hf":
            return
        check(bool(self.path), "model.path", "the hf backbone needs a local model folder or .gguf "
              "file, e.g. model.path=~/.cache/thunderdlm/smollm2 (`thunderdlm convert smollm2`)")
        check(self.time_injection in TIME_INJECTIONS, "model.time_injection",
              f"{self.time_injection!r} is not one of {list(TIME_INJECTIONS)}")
        check(isinstance(self.lora_rank, int) and self.lora_rank >= 0, "model.lora_rank",
              f"must be an integer >= 0, got {self.lora_rank!r}")
        check(self.lora_alpha >= 0, "model.lora_alpha", f"must be >= 0, got {self.lora_alpha}")
        check(0.0 <= self.lora_dropout < 1.0, "model.lora_dropout",
              f"must satisfy 0 <= p < 1, got {self.lora_dropout}")
        check(self.lora_rank == 0 or len(self.lora_targets) > 0, "model.lora_targets",
              "LoRA needs at least one target module name")
        check(self.attn_anneal_steps >= 0, "model.attn_anneal_steps",
              f"must be >= 0, got {self.attn_anneal_steps}")
        freeze_range(self.freeze_layers, None)


    def _check_sizes(self) -> None:
        for field in ("n_layer", "n_head", "n_embd", "cond_dim", "mlp_ratio"):
            value = getattr(self, field)
            check(isinstance(value, int) and value >= 1, f"model.{field}",
                  f"must be a positive integer, got {value!r}")
        check(self.n_embd % self.n_head == 0, "model.n_embd",
              f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        check(self.head_dim % 2 == 0 or self.pos_emb != "rotary", "model.n_embd",
              f"head width n_embd / n_head = {self.head_dim} must be even for rotary positions")

    @property
    def head_dim(self) -> int:
        """Per-head width ``Dh = n_embd / n_head``."""
        return self.n_embd // self.n_head


def freeze_range(spec: str, n_layer: int | None) -> range:
    """``model.freeze_layers`` -> the frozen layer indices; checks the syntax (and the bounds when
    ``n_layer`` is known). '' -> none, 'half' -> the lower half, 'a:b' -> a..b-1."""
    spec = (spec or "").strip()
    if not spec:
        return range(0)
    if spec == "half":
        return range(0 if n_layer is None else n_layer // 2)
    parts = spec.split(":")
    ok = len(parts) == 2 and all(p.strip().isdigit() for p in parts)
    check(ok, "model.freeze_layers", f"{spec!r} is not 'a:b', 'half' or ''")
    a, b = (int(p) for p in parts)
    check(a <= b, "model.freeze_layers", f"{spec!r}: the start must not exceed the end")
    if n_layer is not None:
        check(b <= n_layer, "model.freeze_layers",
              f"{spec!r} reaches past the model's {n_layer} decoder layers")
    return range(a, b)
