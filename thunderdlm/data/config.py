"""``data`` config section: which prepared data folder to read and the window length."""
from __future__ import annotations

from dataclasses import dataclass

from thunderdlm.config import check, param


@dataclass
class DataConfig:
    dir: str = param("data/shakespeare_char", help="a folder written by `thunderdlm data prepare`")
    seq_len: int = param(256, help="tokens per training window (the model's context)")

    def __post_init__(self):
        check(self.seq_len >= 2, "data.seq_len", f"must be ≥ 2, got {self.seq_len}")
