"""Portable run folders: where a moved run folder (or an export) finds its data and pretrained model.

``config.json`` stores ``data.dir`` as it was typed (usually relative to the directory training ran
in) and ``model.path`` as given (an absolute path, or ``~/...``). A folder moved elsewhere, or used
from another directory, resolves them when it is loaded:

- ``data.dir``: the first of these that is a data folder whose ``meta.json`` is the one recorded in
  ``data.json`` (same tokenizer fingerprint, token counts and source): the path as stored (absolute,
  or relative to the current directory), ``data.json``'s absolute ``dir``, its ``dir_from_run``
  (the data folder relative to the run folder, written since runs record it) and the stored path
  relative to the run folder's parent. None matching keeps the stored value (evaluation then names
  the missing folder; loading and sampling do not need the data).
- ``model.path`` (hf backbone): as stored (``~`` expanded; a relative path is tried against the
  run folder first, which is how an export points at its own ``lm/``), else the run folder's own
  ``lm/`` copy, else the thunderdlm cache folder of the same name (``~/.cache/thunderdlm/<name>``),
  else a ``ModelLoadError`` naming the field and every place tried.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from thunderdlm.errors import ModelLoadError
from thunderdlm.run_config import RunConfig

LM_DIR = "lm"           # an export's (or a self-contained run's) copy of its pretrained model


def cache_root() -> Path:
    """$THUNDERDLM_CACHE, else ~/.cache/thunderdlm (where `thunderdlm convert` writes)."""
    return Path(os.environ.get("THUNDERDLM_CACHE", "~/.cache/thunderdlm")).expanduser()


def resolve_paths(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """``cfg`` with ``data.dir`` and ``model.path`` pointing at folders that exist (see above)."""
    run_dir = Path(run_dir)
    cfg.data.dir = resolve_data_dir(cfg.data.dir, run_dir)
    if cfg.model.name == "hf":
        cfg.model.path = resolve_model_path(cfg.model.path, run_dir)
    return cfg


def _record(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / "data.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def resolve_data_dir(stored: str, run_dir: Path) -> str:
    record = _record(run_dir)
    want = record.get("meta")
    candidates = [Path(stored).expanduser()]
    if record.get("dir"):
        candidates.append(Path(record["dir"]))
    if record.get("dir_from_run"):
        candidates.append(run_dir / record["dir_from_run"])
    if not Path(stored).is_absolute():
        candidates.append(run_dir.parent / stored)
    for folder in candidates:
        meta = _meta(folder)
        if meta is not None and (want is None or meta == want):
            return str(folder if folder == candidates[0] else folder.resolve())
    return stored


def resolve_model_path(stored: str, run_dir: Path) -> str:
    path = Path(stored).expanduser()
    tried = []
    candidates = [run_dir / path, path] if not path.is_absolute() else [path]
    candidates += [run_dir / LM_DIR, cache_root() / path.name]
    for c in candidates:
        if c.exists():
            return str(c)
        tried.append(str(c))
    raise ModelLoadError(f"config field 'model.path': the pretrained model '{stored}' of run "
                         f"'{run_dir}' is not on this machine (tried {', '.join(tried)}); copy the "
                         "model folder there, or run `thunderdlm convert smollm2` for SmolLM2")
