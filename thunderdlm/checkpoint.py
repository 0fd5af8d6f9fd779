"""Checkpoints: safetensors files written atomically, and exact trainer state.

Layout inside a run folder::

    checkpoints/step_00001000/
        model.safetensors        raw weights
        ema.safetensors          EMA weights (when train.ema_decay > 0)
        optimizer.safetensors    AdamW moments, flattened as "state.<param index>.<key>"
        optimizer.json           the optimiser's param groups (lr, betas, ...)
        state.json               step, tokens seen, training time, ...
        rng_rank<r>.safetensors  torch CPU/CUDA RNG and the data sampler state of rank r
        checksums.json           sha256 of every other file, verified when the checkpoint loads
    checkpoints/latest           name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder that is renamed into place only when every
file is on disk, and ``latest`` is replaced with ``os.replace``: a kill at any moment leaves the
previous checkpoint intact. Loading a damaged checkpoint (missing, truncated, or with bytes that
no longer match its checksum) falls back to the previous one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thunderdlm.errors import CheckpointError

CKPT_DIR = "checkpoints"
CHECKSUMS = "checksums.json"
WEIGHT_FILES = ("model.safetensors", "ema.safetensors")


def writable_problem(path: Path) -> str | None:
    """None when ``path`` can be written (atomically: a temp file beside it, then a rename), else
    why not; checked before a long computation whose result would otherwise be lost."""
    path = Path(path)
    if path.is_dir():
        return f"'{path}' is a folder"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return f"its folder '{parent}' does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):    # the file itself is replaced by a rename
        return f"'{parent}' is not writable"
    return None


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN / inf float replaced by None, so the JSON written is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out`` to fill; when the block succeeds it replaces ``out`` (rename),
    otherwise it is removed and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors file written to a temp name and renamed (shared storage is cloned first)."""
    tmp = path.with_name(f".{path.name}.tmp")
    flat = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    try:
        save_file(flat, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    except SafetensorError as e:    # its I/O errors (disk full, ulimit -f) are not OSErrors
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write '{path}': {str(e).split(': ', 1)[-1]}") from None
    os.replace(tmp, path)


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"checkpoint file '{path}' is missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file '{path}' is truncated or corrupt ({e})") from None


# ---- optimizer state <-> flat tensors ------------------------------------------------------------

def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"state.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, sd["param_groups"]


def optimizer_from_flat(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": groups}


# ---- checkpoint folders ----------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CKPT_DIR
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def begin_checkpoint(run_dir: Path, step: int) -> Path:
    """Create (empty) the temporary folder a checkpoint is written into."""
    tmp = Path(run_dir) / CKPT_DIR / f".tmp-{checkpoint_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: Path) -> None:
    """``checksums.json``: the sha256 of every file of a finished checkpoint folder."""
    sums = {p.name: file_sha256(p) for p in sorted(folder.iterdir())
            if p.is_file() and p.name != CHECKSUMS and not p.name.startswith(".")}
    atomic_write_text(folder / CHECKSUMS, json.dumps(sums, indent=1))


def checksum_problem(folder: Path) -> str | None:
    """None when every file listed in ``checksums.json`` still has its sha256 (or the folder has no
    checksums: written before they existed, or by hand), else what is wrong."""
    path = folder / CHECKSUMS
    if not path.exists():
        return None
    try:
        sums = json.loads(path.read_text())
        assert isinstance(sums, dict)
    except (json.JSONDecodeError, UnicodeDecodeError, AssertionError):
        return f"'{path}' is corrupt"
    for name, expected in sums.items():
        if not (folder / name).is_file():
            return f"'{folder / name}' is missing"
        if file_sha256(folder / name) != expected:
            return f"'{folder / name}' does not match its checksum (the file is corrupt)"
    return None


def commit_checkpoint(run_dir: Path, tmp: Path, step: int, keep: int) -> Path:
    """Checksum the finished temp folder, rename it into place, point ``latest`` at it, prune."""
    write_checksums(tmp)
    final = Path(run_dir) / CKPT_DIR / checkpoint_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    atomic_write_text(Path(run_dir) / CKPT_DIR / "latest", final.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_model_files(folder: Path, model_state: dict, ema_state: dict | None,
                      opt: torch.optim.Optimizer | None, state: dict) -> None:
    save_tensors(folder / "model.safetensors", model_state)
    if ema_state is not None:
        save_tensors(folder / "ema.safetensors", ema_state)
    if opt is not None:
        tensors, groups = optimizer_to_flat(opt)
        save_tensors(folder / "optimizer.safetensors", tensors)
        atomic_write_text(folder / "optimizer.json", json.dumps(groups))
    atomic_write_text(folder / "state.json", json.dumps(state, indent=1))


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint folder whose files load; falls back past a damaged one."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(f"run folder '{run_dir}' has no checkpoint yet "
                              "(training stopped before the first one was written)")
    pointer = Path(run_dir) / CKPT_DIR / "latest"
    if pointer.exists():
        named = Path(run_dir) / CKPT_DIR / pointer.read_text().strip()
        if named in ckpts:
            ckpts = [c for c in ckpts if c <= named]
    skipped = []
    for ckpt in reversed(ckpts):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            for name, why in skipped:   # said once, on stderr: the run goes on from an older one
                print(f"warning: skipped the damaged checkpoint {name} ({why}); using {ckpt.name}",
                      file=sys.stderr)
            return ckpt
        skipped.append((ckpt.name, problem))
    raise CheckpointError(f"every checkpoint in '{run_dir}/{CKPT_DIR}' is damaged: "
                          f"{checkpoint_problem(ckpts[-1])}")


def checkpoint_problem(ckpt: Path) -> str | None:
    """None when the checkpoint's files are complete, readable and match their checksums, else
    what is wrong."""
    for name in ("model.safetensors", "state.json"):
        if not (ckpt / name).exists():
            return f"'{ckpt / name}' is missing"
    problem = checksum_problem(ckpt)
    if problem:
        return problem
    for path in ckpt.glob("*.safetensors"):
        try:
            with open(path, "rb") as f:
                header = int.from_bytes(f.read(8), "little")
                f.seek(0, os.SEEK_END)
                size = f.tell()
            if header <= 0 or 8 + header > size:
                return f"'{path}' is truncated"
            tensors = load_file(str(path))
            if path.name in WEIGHT_FILES and not all(torch.isfinite(t).all() for t in tensors.values()
                                                     if t.is_floating_point()):
                return f"'{path}' holds NaN or infinite weights (corrupt)"
        except (SafetensorError, OSError, ValueError) as e:
            return f"'{path}' is truncated or corrupt ({e})"
    try:
        json.loads((ckpt / "state.json").read_text())
    except json.JSONDecodeError:
        return f"'{ckpt / 'state.json'}' is corrupt"
    return None


def read_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "state.json").read_text())


def read_optimizer_groups(ckpt: Path) -> list[dict]:
    """The optimiser's param groups from ``optimizer.json``, or a CheckpointError naming it."""
    path = ckpt / "optimizer.json"
    try:
        groups = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"'{path}' is unreadable ({e}); the checkpoint is damaged") from None
    if not (isinstance(groups, list) and all(isinstance(g, dict) and "params" in g for g in groups)):
        raise CheckpointError(f"'{path}' is not a list of optimizer param groups; the checkpoint is damaged")
    return groups
