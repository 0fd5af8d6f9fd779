"""Loading a run folder: config, tokenizer, process and network with its trained weights.

``load_run`` rebuilds everything from the run folder alone (config.json, tokenizer/, the latest
valid checkpoint): no flags, no download. It sits below both the Python API (``api.py``, which wraps
the result as a :class:`~thunderdlm.api.DiffusionLM`) and the run judge (``judges/run.py``), so a
judge loads an autoregressive run without going through the API.

It also loads an export folder (``thunderdlm export``, detected by ``thunderdlm_export.json``):
the run config embedded there, ``tokenizer/`` and the single ``model.safetensors``. Either kind of
folder may have moved: ``portable.py`` finds its data folder and pretrained model again.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from thunderdlm import checkpoint as ck
from thunderdlm.config import apply_overrides
from thunderdlm.errors import CheckpointError
from thunderdlm.portable import resolve_paths
from thunderdlm.processes import Process, build_process
from thunderdlm.run_config import RunConfig, read_run_config
from thunderdlm.runfolder import RunFolder
from thunderdlm.runtime import resolve_device


@dataclass(eq=False)
class LoadedRun:
    """A trained network in eval mode on ``device``, with the tokenizer, process and config it was
    trained with, and the checkpoint folder its weights came from."""
    run_dir: Path
    cfg: RunConfig = field(repr=False)
    model: nn.Module = field(repr=False)
    process: Process = field(repr=False)
    tokenizer: object = field(repr=False)
    device: torch.device
    checkpoint: Path                  # the checkpoint folder (an export: the export folder itself)
    weights_file: str = "model.safetensors"   # or "ema.safetensors": which file of it was loaded
    export: dict | None = field(default=None, repr=False)   # thunderdlm_export.json of an export

    def source_info(self) -> dict:
        """Where the weights were trained: source run, checkpoint, step, tokens (an export keeps its
        source's)."""
        if self.export is not None:
            return {k: self.export[k] for k in ("source_run", "checkpoint", "step", "tokens")
                    if k in self.export}
        state = ck.read_state(self.checkpoint)
        return {"source_run": str(self.run_dir.resolve()), "checkpoint": self.checkpoint.name,
                "step": int(state.get("step", 0)), "tokens": int(state.get("tokens", 0))}

    @property
    def context(self) -> int:
        """Longest sequence (in tokens) the model was trained on."""
        return self.cfg.data.seq_len


def load_run(run: str | Path, checkpoint: str | None = None, device: str = "auto", ema: bool = True,
             overrides: list[str] | None = None) -> LoadedRun:
    """Rebuild a trained model from its run folder (EMA weights when the run kept them).

    ``overrides`` (``key=value``) change the stored config before the model is built, e.g. a
    sampler setting (``process.scheduling_matrix=pyramid``); one that changes the network's shape
    fails with the checkpoint mismatch error.

    No process-wide torch state changes: not the thread count, the default dtype, grad mode or
    the denormal flag (the entry points, CLI and trainer, set those; trained weights hold no
    denormals, and sampling measured the same speed with and without the flush), and not the
    global RNG, which building the network would otherwise draw from (tests/test_load_state.py)."""
    run_dir = Path(run)
    export = read_export_info(run_dir)             # None for a run folder
    cfg = _run_config(run_dir, export, overrides)
    if overrides:
        trained = _run_config(run_dir, export).data.seq_len
        if cfg.data.seq_len > trained:
            raise CheckpointError(f"config field 'data.seq_len': the run was trained on {trained}-token "
                                  f"windows; it cannot be used on {cfg.data.seq_len} (a shorter one is fine)")
    cfg = resolve_paths(cfg, run_dir)              # a moved folder: data.dir, model.path
    tokenizer = RunFolder(run_dir).tokenizer()
    dev = resolve_device(device)
    process = build_process(cfg.process, tokenizer.vocab_size)
    with torch.random.fork_rng(devices=[]):   # the random init is overwritten by the checkpoint
        model = process.build_network(cfg.model, cfg.data.seq_len)
    if export is not None:    # an export: one weights file, the network's keys under "network."
        if checkpoint:
            raise CheckpointError(f"'{run_dir}' is an export (one set of weights, from "
                                  f"{export.get('checkpoint')}); it has no checkpoint '{checkpoint}'")
        ckpt, weights = run_dir, "model.safetensors"
        state = {k.removeprefix("network."): v for k, v in ck.load_tensors(ckpt / weights).items()}
    elif checkpoint:   # a named checkpoint is used as it is, or refused: no silent fallback
        ckpt = run_dir / ck.CKPT_DIR / checkpoint
        problem = ck.checkpoint_problem(ckpt) if ckpt.is_dir() else f"'{ckpt}' does not exist"
        if problem:
            raise CheckpointError(f"checkpoint '{checkpoint}' of '{run_dir}' cannot be used: {problem}")
    else:
        ckpt = ck.latest_checkpoint(run_dir)
    if export is None:
        weights = "ema.safetensors" if ema and (ckpt / "ema.safetensors").exists() else "model.safetensors"
        state = ck.load_tensors(ckpt / weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        where = f"{EXPORT_INFO}'s run_config" if export is not None else "config.json"
        raise CheckpointError(f"'{ckpt / weights}' does not match the model in '{run_dir}/{where}': "
                              f"{str(e).splitlines()[0]}") from None
    model.to(dev).eval()
    return LoadedRun(run_dir, cfg, model, process, tokenizer, dev, ckpt, weights, export)


# ---- export folders (``thunderdlm export``) ----------------------------------------------------------

EXPORT_INFO = "thunderdlm_export.json"


def read_export_info(folder: Path) -> dict | None:
    """An export folder's ``thunderdlm_export.json`` (None for a run folder)."""
    path = Path(folder) / EXPORT_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{path}' is not valid UTF-8 JSON ({e}); export the run again") from None
    if not isinstance(info, dict) or not isinstance(info.get("run_config"), dict):
        raise CheckpointError(f"'{path}' has no 'run_config' object; it is not a thunderdlm export "
                              "(export the run again)")
    return info


def _run_config(run_dir: Path, export: dict | None, overrides: list[str] | None = None) -> RunConfig:
    """The run's config: config.json of a run folder, or the one an export embeds."""
    if export is None:
        return read_run_config(run_dir, overrides)
    return RunConfig.from_data(apply_overrides(copy.deepcopy(export["run_config"]), overrides or []))
