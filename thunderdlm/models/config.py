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
MODEL_NAMES: tuple[str, ...] = ("ddit", "gpt")

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
    """Architecture of a from-scratch backbone (DDiT or GPT)."""

    name: str = param("ddit", help="backbone: 'ddit' (SEDD/MDLM diffusion transformer with adaLN) "
                                   "or 'gpt' (nanoGPT-style pre-LN transformer)",
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
