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
from thunderdlm.models.hf_adapter import HFDenoiser

#: name (``model.name``) -> backbone class
MODELS: dict[str, type[Backbone]] = {"ddit": DDiT, "gpt": GPT, "hf": HFDenoiser}


def build_model(cfg: ModelConfig, vocab_size: int, max_seq_len: int,
                out_dim: int | None = None) -> Backbone:
    """Instantiate the backbone named by ``cfg.name``: a ``vocab_size`` token table, output width
    ``out_dim`` (default ``vocab_size``: logits)."""
    if cfg.name not in MODELS:
        raise ConfigError(f"config field 'model.name': unknown backbone {cfg.name!r}"
                          f"{closest_name(str(cfg.name), list(MODELS))}")
    return MODELS[cfg.name](cfg, vocab_size=vocab_size, max_seq_len=max_seq_len, out_dim=out_dim)


def model_width(cfg: ModelConfig) -> int:
    """The width D of the backbone ``cfg`` builds, without building it (a pretrained model's
    hidden size is read from its config)."""
    if cfg.name != "hf":
        return cfg.n_embd
    from thunderdlm.models.hf_io import load_config

    hf_cfg = load_config(cfg.path)
    return int(getattr(hf_cfg, "hidden_size", None) or hf_cfg.n_embd)


__all__ = ["model_width", "MODELS", "Backbone", "DDiT", "GPT", "HFDenoiser", "ModelConfig", "build_model"]
