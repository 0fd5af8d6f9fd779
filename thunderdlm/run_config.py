"""The whole configuration of a run: data, model, process, trainer, seed and output folder.

A run folder stores it as ``config.json``; presets are YAML files in ``thunderdlm/configs/``;
``key=value`` overrides address fields by their dotted path (``train.lr=1e-3``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from thunderdlm.config import apply_overrides, from_dict, load_yaml, param, to_dict
from thunderdlm.data.config import DataConfig
from thunderdlm.errors import CheckpointError
from thunderdlm.models.config import ModelConfig
from thunderdlm.processes.config import ProcessConfig
from thunderdlm.train.config import TrainConfig


@dataclass
class RunConfig:
    data: DataConfig = param(default_factory=DataConfig, help="prepared data and window length")
    model: ModelConfig = param(default_factory=ModelConfig, help="the backbone")
    process: ProcessConfig = param(default_factory=lambda: from_dict(ProcessConfig, {}),
                                   help="the diffusion (or AR) process (its variant by process.name)")
    train: TrainConfig = param(default_factory=TrainConfig, help="optimiser, budget, checkpoints")
    seed: int = param(1337, help="seed of weights, data order and noise")
    out_dir: str = param("runs/default", help="run folder to write")

    @classmethod
    def from_data(cls, data: dict) -> "RunConfig":
        return from_dict(cls, data)  # polymorphic sections pick their variant by ``name``

    def to_dict(self) -> dict:
        return to_dict(self)


def load_config(source: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A preset name or YAML path plus ``key=value`` overrides → validated RunConfig."""
    data = apply_overrides(load_yaml(source), overrides or [])
    return RunConfig.from_data(data)


def read_run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"'{run_dir}' is not a thunderdlm run folder (no config.json); "
                              "pass the folder that `thunderdlm train` wrote")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"'{path}' is not valid JSON ({e}); the run folder is damaged") from None
    return RunConfig.from_data(apply_overrides(data, overrides or []))
