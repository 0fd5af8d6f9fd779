"""Training: the loop (``trainer.py``), DDP / FSDP set-up and state gathering (``distributed.py``),
the EMA (``ema.py``) and the ``train`` config section (``config.py``).

``from thunderdlm.train import Trainer`` works as before, but the names are looked up on first
use (PEP 562) rather than imported here: ``config.py`` sits *below* ``run_config.py`` (a RunConfig
holds a TrainConfig) while the trainer sits *above* it (it builds from a RunConfig), so importing
the trainer when ``thunderdlm.train.config`` is imported would be an import circle.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "trainer": ("Trainer", "TrainSummary", "train", "resume", "budget_progress", "learning_rate",
                "make_optimizer", "train_step_hooks"),
    "distributed": ("init_distributed", "barrier", "rank_device", "fsdp_blocks", "shard_model",
                    "full_state_dicts", "load_full_state_dicts", "fsdp_errors"),
    "ema": ("EMA",),
    "config": ("TrainConfig",),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:   # the same names, for type checkers and editors
    from thunderdlm.train.config import TrainConfig
    from thunderdlm.train.distributed import (barrier, fsdp_blocks, fsdp_errors, full_state_dicts,
                                              init_distributed, load_full_state_dicts, rank_device,
                                              shard_model)
    from thunderdlm.train.ema import EMA
    from thunderdlm.train.trainer import (Trainer, TrainSummary, budget_progress, learning_rate,
                                          make_optimizer, resume, train, train_step_hooks)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'thunderdlm.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"thunderdlm.train.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = sorted(_HOME)
