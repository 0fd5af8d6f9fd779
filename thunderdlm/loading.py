"""Loading a run folder: config, tokenizer, process and network with its trained weights.

``load_run`` rebuilds everything from the run folder alone (config.json, tokenizer/, the latest
valid checkpoint): no flags, no download. It sits below both the Python API (``api.py``, which wraps
the result as a :class:`~thunderdlm.api.DiffusionLM`) and the run judge (``judges/run.py``), so a
judge loads an autoregressive run without going through the API.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from thunderdlm import checkpoint as ck
from thunderdlm.errors import CheckpointError
from thunderdlm.processes import Process, build_process
from thunderdlm.run_config import RunConfig, read_run_config
from thunderdlm.runfolder import RunFolder
from thunderdlm.runtime import resolve_device, setup_runtime


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
    checkpoint: Path

    @property
    def context(self) -> int:
        """Longest sequence (in tokens) the model was trained on."""
        return self.cfg.data.seq_len


def load_run(run: str | Path, checkpoint: str | None = None, device: str = "auto", ema: bool = True,
             overrides: list[str] | None = None) -> LoadedRun:
    """Rebuild a trained model from its run folder (EMA weights when the run kept them).

    ``overrides`` (``key=value``) change the stored config before the model is built, e.g. a
    sampler setting (``process.scheduling_matrix=pyramid``); one that changes the network's shape
    fails with the checkpoint mismatch error."""
    setup_runtime(threads=0)          # denormals only: the caller's thread count is its own
    run_dir = Path(run)
    cfg = read_run_config(run_dir, overrides)
    if overrides:
        trained = read_run_config(run_dir).data.seq_len
        if cfg.data.seq_len > trained:
            raise CheckpointError(f"config field 'data.seq_len': the run was trained on {trained}-token "
                                  f"windows; it cannot be used on {cfg.data.seq_len} (a shorter one is fine)")
    tokenizer = RunFolder(run_dir).tokenizer()
    dev = resolve_device(device)
    process = build_process(cfg.process, tokenizer.vocab_size)
    model = process.build_network(cfg.model, cfg.data.seq_len)
    if checkpoint:   # a named checkpoint is used as it is, or refused: no silent fallback
        ckpt = run_dir / ck.CKPT_DIR / checkpoint
        problem = ck.checkpoint_problem(ckpt) if ckpt.is_dir() else f"'{ckpt}' does not exist"
        if problem:
            raise CheckpointError(f"checkpoint '{checkpoint}' of '{run_dir}' cannot be used: {problem}")
    else:
        ckpt = ck.latest_checkpoint(run_dir)
    weights = "ema.safetensors" if ema and (ckpt / "ema.safetensors").exists() else "model.safetensors"
    state = ck.load_tensors(ckpt / weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"'{ckpt / weights}' does not match the model in '{run_dir}/config.json': "
                              f"{str(e).splitlines()[0]}") from None
    model.to(dev).eval()
    return LoadedRun(run_dir, cfg, model, process, tokenizer, dev, ckpt)
