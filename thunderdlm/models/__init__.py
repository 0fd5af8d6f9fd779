"""Backbones: pure ``nn.Module`` s from token ids and a noise level to logits.

``build_model(cfg, vocab_size, max_seq_len)`` picks the class registered under ``cfg.name`` in
``MODELS``; every class meets the :class:`Backbone` contract (see ``base.py``).
"""
from __future__ import annotations

from thunderdlm.errors import ConfigError
from thunderdlm.models.base import Backbone
from thunderdlm.models.config import ModelConfig, closest_name
from thunderdlm.models.ddit import DDiT
from thunderdlm.models.gpt import GPT

#: name (``model.name``) -> backbone class
MODELS: dict[str, type[Backbone]] = {"ddit": DDiT, "gpt": GPT}


def build_model(cfg: ModelConfig, vocab_size: int, max_seq_len: int,
                out_dim: int | None = None) -> Backbone:
    """Instantiate the backbone named by ``cfg.name``: a ``vocab_size`` token table, output width
    ``out_dim`` (default ``vocab_size``: logits)."""
    if cfg.name not in MODELS:
        raise ConfigError(f"config field 'model.name': unknown backbone {cfg.name!r}"
                          f"{closest_name(str(cfg.name), list(MODELS))}")
    return MODELS[cfg.name](cfg, vocab_size=vocab_size, max_seq_len=max_seq_len, out_dim=out_dim)


__all__ = ["MODELS", "Backbone", "DDiT", "GPT", "ModelConfig", "build_model"]
