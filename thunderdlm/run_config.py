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
from thunderdlm.errors import CheckpointError, ConfigError
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
    if (Path(run_dir) / "thunderdlm_export.json").is_file():     # config.json is transformers' there
        raise CheckpointError(f"'{run_dir}' is an export (`thunderdlm export`: weights only, no "
                              "optimizer or data state): it samples and evaluates but cannot be "
                              "resumed; start a new run from its config instead")
    if not path.exists():
        raise CheckpointError(f"'{run_dir}' is not a thunderdlm run folder (no config.json); "
                              "pass the folder that `thunderdlm train` wrote")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{path}' is not valid UTF-8 JSON ({e}); the run folder is damaged") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object (the run's config), "
                              f"not a {type(data).__name__}; the run folder is damaged")
    return RunConfig.from_data(apply_overrides(data, overrides or []))


# what a checkpoint's weights and data depend on: a resume may not change these, except the model
# fields that leave the network as it is (a moved pretrained folder, how attention is computed)
FIXED_ON_RESUME = ("model", "process.name", "data.seq_len")
FREE_ON_RESUME = ("model.path", "model.gradient_checkpointing", "model.attn_implementation",
                  "model.dropout")


def check_resume_config(stored: RunConfig, new: RunConfig) -> None:
    """Refuse ``--resume`` overrides that change the network's shape or its process (the
    checkpoint could not be loaded, or would train a different model); the tokenizer is checked
    against the run's own when the data loads."""
    old, cur = _flat(stored.to_dict()), _flat(new.to_dict())
    for key in sorted(set(old) | set(cur)):
        if key.startswith(FIXED_ON_RESUME) and key not in FREE_ON_RESUME and old.get(key) != cur.get(key):
            raise ConfigError(f"config field '{key}' cannot change when resuming (the run has "
                              f"{old.get(key)!r}, got {cur.get(key)!r}); start a new run with another out_dir= instead")


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
