"""Documents are separated by an end-of-document (eos) token in the token stream, for every tokenizer;
the char tokenizer gains one only for several documents, and older char folders load as before."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from thunderdlm.data import TokenData, prepare_data
from thunderdlm.data.prepare import split_stream
from thunderdlm.data.tokenizers import CharTokenizer, load_tokenizer
from thunderdlm.errors import DataError, TokenizerError

DOCS = ["the first document, about apples.\n", "a second one, about pears and plums.\n",
        "and the third, about nothing at all.\n"] * 12


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    return path


def _stream(data: TokenData) -> list[int]:
    return np.concatenate([data.split("train"), data.split("val")]).tolist()


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    from tests.tiny_pretrained import tiny_pretrained

    tiny_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


@pytest.mark.parametrize("kind", ["char", "bpe", "word", "hf"])
def test_one_eos_between_consecutive_documents(tmp_path: Path, corpus: Path, kind: str, request):
    hf_path = request.getfixturevalue("hf_dir") if kind == "hf" else None
    vocab = 300 if kind == "bpe" else None
    data = TokenData(prepare_data(tmp_path / "out", paths=[corpus], tokenizer=kind, vocab_size=vocab,
                                  hf_path=hf_path))
    tok = data.tokenizer
    assert tok.eos_id is not None
    ids = _stream(data)
    assert ids.count(tok.eos_id) == len(DOCS) - 1                # between documents, not after the last
    if kind == "word":                                           # lossy: compare per-document tokens
        pieces = np.split(np.array(ids), np.flatnonzero(np.array(ids) == tok.eos_id))
        assert [p[p != tok.eos_id].tolist() for p in pieces] == [tok.encode(d) for d in DOCS]
    else:                                                        # lossless: the exact text back
        assert tok.decode(ids) == tok.eos_text.join(DOCS)
    assert data.meta["documents"] == len(DOCS) and "eos" in data.meta["document_separator"]
    # chars per split: the documents' characters plus one per eos
    assert sum(data.meta["chars"].values()) == sum(map(len, DOCS)) + len(DOCS) - 1


def test_char_eos_is_one_id_past_the_characters(tmp_path: Path, corpus: Path):
    data = TokenData(prepare_data(tmp_path / "out", paths=[corpus]))
    tok = data.tokenizer
    chars = sorted(set("".join(DOCS)))
    assert tok.vocabulary() == chars + ["<|endoftext|>"] and tok.eos_id == len(chars) == tok.vocab_size - 1
    assert tok.encode("the ") == [chars.index(c) for c in "the "]   # no id moved
    ids = _stream(data)
    first_end = ids.index(tok.eos_id)
    assert ids[:first_end] == tok.encode(DOCS[0]) and tok.decode([tok.eos_id]) == "<|endoftext|>"
    assert load_tokenizer(data.folder / "tokenizer").eos_id == tok.eos_id   # saved and reloaded


def test_one_document_gets_no_eos_and_the_char_vocabulary_is_unchanged(tmp_path: Path):
    (tmp_path / "one.txt").write_text("".join(DOCS), encoding="utf-8")
    data = TokenData(prepare_data(tmp_path / "out", paths=[tmp_path / "one.txt"]))
    assert data.tokenizer.eos_id is None and data.tokenizer.vocabulary() == sorted(set("".join(DOCS)))
    assert "documents" not in data.meta


def test_an_old_char_tokenizer_folder_loads_as_before(tmp_path: Path):
    """A char folder written before eos tokens existed: ``eos_id: null``; same fingerprint formula."""
    folder = tmp_path / "tok"
    folder.mkdir()
    chars = ["\n", " ", "a", "b"]
    (folder / "chars.json").write_text(json.dumps(chars))
    fingerprint = hashlib.sha256(json.dumps(["char", chars]).encode()).hexdigest()
    (folder / "tokenizer_meta.json").write_text(json.dumps(
        {"kind": "char", "vocab_size": 4, "bos_id": None, "eos_id": None, "pad_id": None, "unk_id": None,
         "fingerprint": fingerprint}))
    tok = load_tokenizer(folder)
    assert tok.eos_id is None and tok.vocab_size == 4 and tok.decode(tok.encode("ab a\n")) == "ab a\n"
    meta = json.loads((folder / "tokenizer_meta.json").read_text())
    meta["eos_id"] = 7
    (folder / "tokenizer_meta.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerError, match="eos_id 7 .* is not 4"):
        load_tokenizer(folder)


def test_split_stream_cuts_at_the_character_fraction():
    train, val = split_stream(["abcd", "ef", "ghij"], 0.5)      # stream abcd⏎ef⏎ghij: 12 characters
    assert train == ["abcd", None, "e"] and val == ["f", None, "ghij"]
    train, val = split_stream(["abcde", "fgh"], 4 / 9)          # 9 characters, the cut lands on the ⏎
    assert train == ["abcde"] and val == [None, "fgh"]
    assert split_stream(["0123456789"], 0.1) == (["012345678"], ["9"])


def test_tokenizer_from_reuses_a_data_folders_tokenizer(tmp_path: Path, corpus: Path):
    first = TokenData(prepare_data(tmp_path / "a", paths=[corpus], tokenizer="bpe", vocab_size=300))
    (tmp_path / "other.txt").write_text("pears and apples, about nothing.\n" * 20, encoding="utf-8")
    second = TokenData(prepare_data(tmp_path / "b", paths=[tmp_path / "other.txt"], tokenizer_from=first.folder))
    assert second.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    assert second.meta["tokenizer_fingerprint"] == first.meta["tokenizer_fingerprint"]


def test_tokenizer_from_problems_are_named(tmp_path: Path, corpus: Path):
    (tmp_path / "one.txt").write_text("abab" * 50, encoding="utf-8")
    old_char = prepare_data(tmp_path / "a", paths=[tmp_path / "one.txt"])     # a char tokenizer without eos
    with pytest.raises(TokenizerError, match=r"outside the char vocabulary"):
        prepare_data(tmp_path / "b", paths=[corpus], tokenizer_from=old_char)
    with pytest.raises(DataError, match=r"--tokenizer-from '.*nowhere': no tokenizer there"):
        prepare_data(tmp_path / "b", paths=[corpus], tokenizer_from=tmp_path / "nowhere")


def test_a_reused_char_tokenizer_without_eos_separates_by_a_blank_line(tmp_path: Path):
    (tmp_path / "one.txt").write_text("ab\n" * 50, encoding="utf-8")
    old_char = prepare_data(tmp_path / "a", paths=[tmp_path / "one.txt"])
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": "ab" * 20}) + "\n" for _ in range(4)))
    data = TokenData(prepare_data(tmp_path / "b", paths=[tmp_path / "d.jsonl"], tokenizer_from=old_char))
    assert data.tokenizer.decode(_stream(data)) == "\n\n".join(["ab" * 20] * 4)
    assert "no eos" in data.meta["document_separator"]


def test_progress_reports_every_stage_and_ends_at_all_characters(tmp_path: Path, corpus: Path):
    calls = []
    data = TokenData(prepare_data(tmp_path / "out", paths=[corpus], tokenizer="bpe", vocab_size=300,
                                  progress=lambda *call: calls.append(call)))
    total = sum(data.meta["chars"].values())
    assert [c[0] for c in calls[:2]] == ["read", "fit tokenizer"] and calls[-1] == ("tokenize", total, total)
    done = [c[1] for c in calls if c[0] == "tokenize"]
    assert done == sorted(done) and all(c[2] == total for c in calls if c[0] == "tokenize")
