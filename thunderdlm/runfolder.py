"""A run folder holds everything needed to rebuild the model, process and tokenizer with no flags.

    RUN/config.json        the full RunConfig
    RUN/tokenizer/         the tokenizer the model was trained with
    RUN/data.json          where the data came from (folder, meta, tokenizer fingerprint)
    RUN/metrics.jsonl      one JSON object per logged step / evaluation
    RUN/samples/           periodic samples, step_NNNNNNN.txt (train.sample_interval)
    RUN/tensorboard/, RUN/wandb/, RUN/wandb.json   the trackers of train.log_to (train/tracking.py)
    RUN/checkpoints/...    see checkpoint.py
    RUN/.lock              held (flock) by the training that writes the folder

Only one training writes a run folder at a time: :meth:`RunFolder.claim` takes an exclusive
``flock`` on ``RUN/.lock``. The kernel drops it when the process ends however it ends (kill -9
included), so a lock left by a dead process never blocks; the file only records the holder's pid.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from thunderdlm.checkpoint import CKPT_DIR, atomic_write_text
from thunderdlm.data import TokenData, load_tokenizer
from thunderdlm.errors import CheckpointError, TokenizerError


LOCK_FILE = ".lock"


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock``; :meth:`release` (or the process ending) drops it."""

    def __init__(self, folder: Path):
        self.file = open(folder / LOCK_FILE, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise CheckpointError(f"run folder '{folder}' is in use by another training (pid {holder}); "
                                  "wait for it to finish (or stop it), or choose another out_dir=") from None
        except OSError as e:     # e.g. ENOLCK: a network file system without locks
            self.file.close()
            raise CheckpointError(f"cannot lock the run folder '{folder}' ({e.strerror}); "
                                  "train on a local disk or a file system with locks") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    def claim(self, new: bool) -> RunLock:
        """Lock the folder for one training. A new run may go into a missing or empty folder, or a
        run folder (config.json); any other folder is refused rather than partly overwritten."""
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"out_dir '{self.path}' is a file, not a folder; choose another out_dir=")
        if new and self.path.is_dir() and not (self.path / "config.json").exists():
            others = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)
            if others:
                raise CheckpointError(
                    f"out_dir '{self.path}' exists and is not a thunderdlm run folder (it holds "
                    f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); choose a new or "
                    "empty out_dir= so nothing in it is overwritten")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            return RunLock(self.path)
        except OSError as e:     # a read-only parent, a full disk...
            raise CheckpointError(f"cannot write the run folder '{self.path}': {e.strerror or e}") from None

    # ---- creation ------------------------------------------------------------------------------
    def create(self, cfg, data: TokenData) -> None:
        if (self.path / CKPT_DIR).exists() and any((self.path / CKPT_DIR).iterdir()):
            raise CheckpointError(f"run folder '{self.path}' already holds checkpoints; continue it with "
                                  f"`thunderdlm train --resume {self.path}` or choose another out_dir=")
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_config(cfg)
        tok_dir = self.path / "tokenizer"
        if tok_dir.exists():
            shutil.rmtree(tok_dir)
        data.tokenizer.save(tok_dir)
        data_dir = Path(cfg.data.dir).resolve()
        info = {"dir": str(data_dir), "meta": data.meta, "fingerprint": data.tokenizer.fingerprint(),
                # relative to the run folder: found again when both move together (portable.py)
                "dir_from_run": os.path.relpath(data_dir, self.path.resolve())}
        atomic_write_text(self.path / "data.json", json.dumps(info, indent=1))
        (self.path / "metrics.jsonl").unlink(missing_ok=True)

    def write_config(self, cfg) -> None:
        atomic_write_text(self.path / "config.json", json.dumps(cfg.to_dict(), indent=1))

    # ---- tokenizer ------------------------------------------------------------------------------
    def tokenizer(self):
        tok_dir = self.path / "tokenizer"
        if not tok_dir.exists():
            raise CheckpointError(f"run folder '{self.path}' has no tokenizer/ folder; it is incomplete")
        return load_tokenizer(tok_dir)

    def check_tokenizer(self, data: TokenData) -> None:
        """The data's tokenizer must be the one this run was trained with."""
        mine = self.tokenizer().fingerprint()
        theirs = data.tokenizer.fingerprint()
        if mine != theirs:
            raise TokenizerError(
                f"the data folder's tokenizer ({data.meta.get('tokenizer')}, fingerprint {theirs[:12]}) "
                f"differs from the one run '{self.path}' was trained with (fingerprint {mine[:12]}); "
                "use the data folder the run was trained on, or prepare data with the run's tokenizer: "
                f"thunderdlm data prepare --text PATH... --tokenizer-from {self.path}")

    # ---- metrics --------------------------------------------------------------------------------
    def log(self, row: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict]:
        """The logged rows; a torn last line (a kill during a write) is dropped, a bad line
        elsewhere is an error naming the file and line."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        lines = path.read_text(errors="replace").splitlines()
        rows = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                if i == len(lines) - 1:
                    break
                raise CheckpointError(f"'{path}' line {i + 1} is not a JSON object; fix or delete that line")
            rows.append(row)
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after the checkpoint being resumed (they will be logged again)."""
        rows = [r for r in self.metrics() if r.get("step", 0) <= step]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
