"""A run folder holds everything needed to rebuild the model, process and tokenizer with no flags.

    RUN/config.json        the full RunConfig
    RUN/tokenizer/         the tokenizer the model was trained with
    RUN/data.json          where the data came from (folder, meta, tokenizer fingerprint)
    RUN/metrics.jsonl      one JSON object per logged step / evaluation
    RUN/checkpoints/...    see checkpoint.py
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from thunderdlm.checkpoint import CKPT_DIR, atomic_write_text
from thunderdlm.data import TokenData, load_tokenizer
from thunderdlm.errors import CheckpointError, TokenizerError


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

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
        info = {"dir": str(Path(cfg.data.dir).resolve()), "meta": data.meta,
                "fingerprint": data.tokenizer.fingerprint()}
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
                "use the data folder the run was trained on, or prepare data with the run's tokenizer")

    # ---- metrics --------------------------------------------------------------------------------
    def log(self, row: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after the checkpoint being resumed (they will be logged again)."""
        rows = [r for r in self.metrics() if r.get("step", 0) <= step]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
