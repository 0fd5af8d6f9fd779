"""Token bins: writing them, opening them, and drawing batches from them.

A prepared data folder looks like::

    data/shakespeare-char/
        train.bin, val.bin      raw token ids (uint16 when vocab_size < 65536, else uint32)
        meta.json               dtype, vocab_size, tokenizer (kind), tokenizer_fingerprint,
                                tokens and chars per split, source (where the text came from)
        tokenizer/              the tokenizer (see ``tokenizers.py``)

``meta.json`` is written last, so its presence means the folder is complete. Training draws random
windows (:class:`RandomWindows`, resumable bit-for-bit), evaluation uses fixed consecutive
windows (:func:`eval_windows`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thunderdlm.errors import CheckpointError, DataError
from thunderdlm.data.tokenizers import Tokenizer, load_tokenizer

META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


def bin_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id: uint16 below 65536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------

def write_bins(folder: str | Path, splits: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``<split>.bin`` for every split and then ``meta.json``, each atomically.

    ``meta`` must hold ``vocab_size`` and may hold anything else JSON-serialisable (tokenizer
    kind/fingerprint, character counts, source); ``dtype``, ``format`` and the per-split ``tokens``
    counts are added here.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = int(meta["vocab_size"])
    dtype = bin_dtype(vocab_size)
    counts = {}
    for name, ids in splits.items():
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise DataError(f"split '{name}' has token ids outside [0, {vocab_size}); "
                            "the tokenizer and the vocab_size in meta do not match")
        _atomic_write(folder / f"{name}.bin", ids.astype(dtype, copy=False).tobytes())
        counts[name] = int(ids.size)
    full_meta = {"format": FORMAT_VERSION, **meta, "dtype": dtype.name, "tokens": counts}
    _atomic_write(folder / META_FILE, (json.dumps(full_meta, indent=2) + "\n").encode("utf-8"))
    return folder


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path`` and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------

class TokenData:
    """A prepared data folder: read-only memmapped splits, their meta data and the tokenizer."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._meta = self._read_meta()
        self._dtype = np.dtype(self._meta["dtype"])
        self._splits = {name: self._open_split(name, int(count))
                        for name, count in self._meta["tokens"].items()}
        self._tokenizer = load_tokenizer(self.folder / TOKENIZER_DIR)
        expected = self._meta.get("tokenizer_fingerprint")
        if expected is not None and expected != self._tokenizer.fingerprint():
            raise DataError(f"data folder '{self.folder}': the tokenizer in '{TOKENIZER_DIR}/' is not "
                            f"the one the bins were made with; prepare the data again")

    def _read_meta(self) -> dict[str, Any]:
        path = self.folder / META_FILE
        if not path.is_file():
            raise DataError(f"data folder '{self.folder}' is not prepared ({META_FILE} is missing); "
                            f"run `thunderdlm data prepare ... --out {self.folder}` first "
                            "(e.g. `thunderdlm data prepare shakespeare --tokenizer char`)")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            np.dtype(meta["dtype"]), int(meta["vocab_size"]), dict(meta["tokens"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError):
            raise DataError(f"'{path}' is corrupt (expected JSON with dtype, vocab_size and tokens); "
                            "prepare the data again") from None
        return meta

    def _open_split(self, name: str, count: int) -> np.ndarray:
        """Memmap ``<name>.bin`` read-only after checking its size against meta.json."""
        path = self.folder / f"{name}.bin"
        if not path.is_file():
            raise DataError(f"token bin '{path}' is missing; prepare the data again")
        expected = count * self._dtype.itemsize
        actual = path.stat().st_size
        if actual != expected:
            raise DataError(f"token bin '{path}' has {actual} bytes but {META_FILE} says {count} "
                            f"{self._dtype.name} tokens ({expected} bytes): it is truncated or from "
                            "another preparation; prepare the data again")
        if count == 0:  # np.memmap cannot map an empty file
            return np.empty(0, dtype=self._dtype)
        tokens = np.memmap(path, dtype=self._dtype, mode="r", shape=(count,))
        top = int(tokens.max())    # one pass: an id past the vocabulary would index out of range later
        if top >= int(self._meta["vocab_size"]):
            raise DataError(f"token bin '{path}' holds token id {top} but {META_FILE} says the "
                            f"vocabulary has {self._meta['vocab_size']} ids; prepare the data again")
        return tokens

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self._meta["vocab_size"])

    @property
    def split_names(self) -> list[str]:
        return list(self._splits)

    def split(self, name: str) -> np.ndarray:
        """The token ids of split ``name`` (a read-only memmap), shape (num_tokens,)."""
        if name not in self._splits:
            raise DataError(f"data folder '{self.folder}' has no split '{name}' "
                            f"(it has: {', '.join(self._splits)})")
        return self._splits[name]

    def chars_per_token(self, split: str) -> float:
        """Characters of text per token in ``split`` (converts nats/token into bits/character)."""
        tokens = len(self.split(split))
        chars = self._meta.get("chars", {}).get(split)
        if chars is None or tokens == 0:
            raise DataError(f"'{self.folder / META_FILE}' has no character count for split '{split}'; "
                            "prepare the data again")
        return float(chars) / tokens

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v):,}" for k, v in self._splits.items())
        return f"TokenData('{self.folder}', vocab_size={self.vocab_size}, {sizes})"


# ----------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------

def _check_length(tokens: np.ndarray, seq_len: int, split: str) -> None:
    if seq_len < 1:
        raise DataError(f"seq_len must be at least 1, got {seq_len}")
    if len(tokens) < seq_len:
        raise DataError(f"split '{split}' has only {len(tokens):,} tokens, fewer than seq_len={seq_len}; "
                        "use a smaller `data.seq_len` or more data")


class RandomWindows:
    """Training batches of random windows, resumable exactly through :meth:`state_dict`.

    Each row is ``tokens[s : s + seq_len]`` with ``s`` uniform in ``[0, len - seq_len]``, drawn
    from a private ``torch.Generator`` seeded with ``seed + 1000003 * rank`` so ranks differ.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int,
                 rank: int = 0, split: str = "train"):
        _check_length(tokens, seq_len, split)
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed + 1000003 * rank)
        self.batches_drawn = 0

    def next_batch(self) -> torch.Tensor:
        """A LongTensor of shape (batch_size, seq_len)."""
        high = len(self.tokens) - self.seq_len + 1  # exclusive bound: starts in [0, len - seq_len]
        starts = torch.randint(0, high, (self.batch_size,), generator=self.generator).tolist()
        rows = np.stack([self.tokens[s:s + self.seq_len] for s in starts])  # (B, T)
        self.batches_drawn += 1
        return torch.from_numpy(rows.astype(np.int64))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Generator state (uint8 tensor) and number of batches drawn (int64 tensor)."""
        return {"generator": self.generator.get_state().clone(),
                "batches_drawn": torch.tensor(self.batches_drawn, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue exactly where the sampler that produced ``state`` stopped."""
        try:
            generator, drawn = state["generator"], state["batches_drawn"]
            self.generator.set_state(generator.to(torch.uint8).cpu())
        except (KeyError, TypeError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"the data sampler state in the checkpoint is malformed ({e}); "
                                  "resume from another checkpoint or start a new run") from None
        self.batches_drawn = int(drawn)


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None,
                 split: str = "val") -> torch.Tensor:
    """Consecutive non-overlapping windows from the start of ``tokens``: LongTensor (N, seq_len).

    With ``max_windows`` set and more windows available, ``max_windows`` of them are taken evenly
    spaced over the split (always including the first). Deterministic.
    """
    _check_length(tokens, seq_len, split)
    if max_windows is not None and max_windows < 1:
        raise DataError(f"max_windows must be at least 1 (or None for all), got {max_windows}")
    count = len(tokens) // seq_len
    windows = np.asarray(tokens[: count * seq_len]).reshape(count, seq_len)  # (count, T)
    if max_windows is not None and count > max_windows:
        picked = np.round(np.linspace(0, count - 1, max_windows)).astype(np.int64)  # strictly increasing
        windows = windows[picked]
    return torch.from_numpy(windows.astype(np.int64))
