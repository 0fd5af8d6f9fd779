"""Token bins, TokenData, RandomWindows (resumable) and eval_windows."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from thunderdlm.data.bins import RandomWindows, TokenData, eval_windows, write_bins
from thunderdlm.data.tokenizers import CharTokenizer
from thunderdlm.errors import CheckpointError, DataError


def _prepared(folder: Path, text: str = "hello world, the data layer\n" * 40) -> Path:
    """A minimal prepared folder written with the public pieces (char tokenizer, 90/10)."""
    tok = CharTokenizer.from_text(text)
    n = int(len(text) * 0.9)
    tok.save(folder / "tokenizer")
    meta = {"vocab_size": tok.vocab_size, "tokenizer": tok.kind,
            "tokenizer_fingerprint": tok.fingerprint(), "chars": {"train": n, "val": len(text) - n}}
    splits = {"train": tok.encode_array(text[:n]), "val": tok.encode_array(text[n:])}
    return write_bins(folder, splits, meta)


@pytest.mark.parametrize("vocab_size, dtype", [(84, np.uint16), (65535, np.uint16), (65536, np.uint32),
                                               (100_000, np.uint32)])
def test_write_bins_round_trip_and_dtype(tmp_path: Path, vocab_size: int, dtype: type):
    rng = np.random.default_rng(0)
    train = rng.integers(0, vocab_size, size=1000)
    val = np.array([vocab_size - 1, 0, 1])
    write_bins(tmp_path, {"train": train, "val": val}, {"vocab_size": vocab_size, "source": "test"})
    assert (tmp_path / "train.bin").stat().st_size == 1000 * np.dtype(dtype).itemsize
    assert np.array_equal(np.fromfile(tmp_path / "train.bin", dtype=dtype), train)
    assert np.array_equal(np.fromfile(tmp_path / "val.bin", dtype=dtype), val)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["dtype"] == np.dtype(dtype).name
    assert meta["tokens"] == {"train": 1000, "val": 3} and meta["source"] == "test"
    assert not list(tmp_path.glob(".*.tmp"))  # temp files were renamed away


def test_write_bins_rejects_ids_out_of_range(tmp_path: Path):
    with pytest.raises(DataError, match="outside"):
        write_bins(tmp_path, {"train": np.array([0, 10])}, {"vocab_size": 10})


def test_token_data_opens_prepared_folder(tmp_path: Path):
    text = "hello world, the data layer\n" * 40
    data = TokenData(_prepared(tmp_path, text))
    assert data.vocab_size == len(set(text))
    train = data.split("train")
    assert isinstance(train, np.memmap) and not train.flags.writeable
    assert data.tokenizer.decode(train) + data.tokenizer.decode(data.split("val")) == text
    assert data.chars_per_token("val") == 1.0
    assert data.meta["tokenizer"] == "char"
    with pytest.raises(DataError, match="no split 'test'"):
        data.split("test")


def test_token_data_unprepared_folder(tmp_path: Path):
    with pytest.raises(DataError, match="is not prepared.*thunderdlm data prepare"):
        TokenData(tmp_path)


def test_token_data_truncated_bin(tmp_path: Path):
    folder = _prepared(tmp_path)
    path = folder / "val.bin"
    path.write_bytes(path.read_bytes()[:-2])  # one uint16 token short
    with pytest.raises(DataError, match=r"val\.bin' has \d+ bytes.*truncated"):
        TokenData(folder)


def test_token_data_foreign_tokenizer(tmp_path: Path):
    folder = _prepared(tmp_path)
    CharTokenizer.from_text("hello world, the data layer\n!").save(folder / "tokenizer")
    with pytest.raises(DataError, match="not the one the bins were made with"):
        TokenData(folder)


# ----------------------------------------------------------------------------------------------
# RandomWindows
# ----------------------------------------------------------------------------------------------


TOKENS = np.arange(1000, dtype=np.uint16)


def test_random_windows_shape_and_contents():
    windows = RandomWindows(TOKENS, seq_len=16, batch_size=8, seed=0)
    batch = windows.next_batch()
    assert batch.shape == (8, 16) and batch.dtype == torch.int64
    # TOKENS[i] == i, so every row is a run of consecutive ids starting in [0, 1000 - 16]
    assert torch.equal(batch - batch[:, :1], torch.arange(16).expand(8, 16))
    assert int(batch[:, 0].min()) >= 0 and int(batch[:, -1].max()) <= 999


def test_random_windows_cover_the_last_start():
    windows = RandomWindows(np.arange(10), seq_len=8, batch_size=64, seed=1)
    starts = set(windows.next_batch()[:, 0].tolist())
    assert starts == {0, 1, 2}  # [0, len - seq_len] inclusive, nothing beyond


def test_random_windows_resume_exactly():
    original = RandomWindows(TOKENS, seq_len=32, batch_size=4, seed=7)
    for _ in range(5):
        original.next_batch()
    state = original.state_dict()
    assert state["generator"].dtype == torch.uint8 and int(state["batches_drawn"]) == 5
    expected = [original.next_batch() for _ in range(3)]
    resumed = RandomWindows(TOKENS, seq_len=32, batch_size=4, seed=123)  # seed is overwritten
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 5
    for want in expected:
        assert torch.equal(resumed.next_batch(), want)


def test_random_windows_seed_and_rank_matter():
    def first(seed: int, rank: int) -> torch.Tensor:
        return RandomWindows(TOKENS, seq_len=8, batch_size=16, seed=seed, rank=rank).next_batch()

    assert torch.equal(first(0, 0), first(0, 0))
    assert not torch.equal(first(0, 0), first(0, 1))
    assert not torch.equal(first(0, 0), first(1, 0))


def test_random_windows_split_too_short():
    with pytest.raises(DataError, match=r"split 'val' has only 10 tokens.*seq_len=32.*data\.seq_len"):
        RandomWindows(np.arange(10), seq_len=32, batch_size=2, seed=0, split="val")


def test_random_windows_bad_state():
    windows = RandomWindows(TOKENS, seq_len=8, batch_size=2, seed=0)
    with pytest.raises(CheckpointError, match="malformed"):
        windows.load_state_dict({"batches_drawn": torch.tensor(3)})


# ----------------------------------------------------------------------------------------------
# eval_windows
# ----------------------------------------------------------------------------------------------


def test_eval_windows_consecutive_and_deterministic():
    windows = eval_windows(TOKENS, seq_len=64)
    assert windows.shape == (15, 64) and windows.dtype == torch.int64
    assert torch.equal(windows.flatten(), torch.arange(15 * 64))
    assert torch.equal(windows, eval_windows(TOKENS, seq_len=64))


def test_eval_windows_limited_are_evenly_spaced():
    windows = eval_windows(TOKENS, seq_len=10, max_windows=4)  # 100 windows available
    assert windows[:, 0].tolist() == [0, 330, 660, 990]
    assert eval_windows(TOKENS, seq_len=10, max_windows=1)[:, 0].tolist() == [0]
    assert eval_windows(TOKENS, seq_len=100, max_windows=50).shape == (10, 100)  # fewer exist


def test_eval_windows_errors():
    with pytest.raises(DataError, match="fewer than seq_len"):
        eval_windows(np.arange(5), seq_len=6)
    with pytest.raises(DataError, match="max_windows"):
        eval_windows(TOKENS, seq_len=6, max_windows=0)
