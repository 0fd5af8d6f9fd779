"""Reading the user's own corpus in every format: text, JSON, JSON lines, CSV, Parquet (gzipped or
not), folders saved by ``datasets``, nested text fields, splits, and the named errors."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thunderdlm.data.corpus import read_documents
from thunderdlm.errors import DataError

DOCS = ["First document.\nIt has two lines.", "Second, with \"quotes\", commas; and NA", "Third: 123"]


def _write(path: Path, data: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data.encode("utf-8")))
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _jsonl(docs=DOCS, field="text") -> str:
    return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs))


def _csv(docs=DOCS) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "text"])
    writer.writerows([i, d] for i, d in enumerate(docs))
    return out.getvalue()


def _parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz", "docs.json", "docs.json.gz",
                                  "docs.csv", "docs.csv.gz", "docs.parquet"])
def test_every_record_format_gives_one_document_per_record(tmp_path: Path, name: str):
    path = tmp_path / name
    if ".jsonl" in name:
        _write(path, _jsonl())
    elif ".json" in name:
        _write(path, json.dumps([{"text": d, "n": i} for i, d in enumerate(DOCS)]))
    elif ".csv" in name:
        _write(path, _csv())    # quotes, commas, a newline in a cell, "NA" and digits stay text
    else:
        _parquet(path, {"id": list(range(len(DOCS))), "text": DOCS})
    assert read_documents([path]) == DOCS


@pytest.mark.parametrize("name", ["notes.txt", "notes.txt.gz", "notes.md"])
def test_a_text_file_is_one_document_gzipped_or_not(tmp_path: Path, name: str):
    assert read_documents([_write(tmp_path / name, "\n\n".join(DOCS))]) == ["\n\n".join(DOCS)]


def test_a_folder_mixes_formats_in_sorted_order(tmp_path: Path):
    _write(tmp_path / "a.txt.gz", "alpha")
    _write(tmp_path / "b.jsonl", _jsonl(["beta", "gamma"]))
    _parquet(tmp_path / "c.parquet", {"text": ["delta"]})
    _write(tmp_path / "d.csv", _csv(["epsilon"]))
    assert read_documents([tmp_path]) == ["alpha", "beta", "gamma", "delta", "epsilon"]


def test_a_nested_text_field_is_a_dotted_path(tmp_path: Path):
    records = [{"meta": {"body": d, "lang": "en"}} for d in DOCS]
    _write(tmp_path / "n.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    _parquet(tmp_path / "n.parquet", {"meta": [{"body": d, "lang": "en"} for d in DOCS]})
    assert read_documents([tmp_path / "n.jsonl"], text_field="meta.body") == DOCS
    assert read_documents([tmp_path / "n.parquet"], text_field="meta.body") == DOCS
    # a key that itself contains a dot wins over the nested path
    _write(tmp_path / "dotted.jsonl", json.dumps({"meta.body": "literal", "meta": {"body": "nested"}}) + "\n")
    assert read_documents([tmp_path / "dotted.jsonl"], text_field="meta.body") == ["literal"]


@pytest.fixture
def saved_dict(tmp_path: Path) -> Path:
    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:2]}),
                          "validation": datasets.Dataset.from_dict({"text": DOCS[2:]})}).save_to_disk(folder)
    return folder


def test_a_saved_dataset_dict_reads_train_or_the_chosen_split(saved_dict: Path):
    assert read_documents([saved_dict]) == DOCS[:2]
    assert read_documents([saved_dict], split="validation") == DOCS[2:]


def test_a_saved_dataset_inside_a_folder_is_read_as_a_dataset(saved_dict: Path, tmp_path: Path):
    _write(tmp_path / "a.txt", "before")           # tmp_path/saved is the DatasetDict
    _write(tmp_path / "z.txt", "after")
    assert read_documents([tmp_path], split="validation") == ["before", *DOCS[2:], "after"]


def test_a_saved_single_dataset_reads_all_rows(tmp_path: Path):
    import datasets

    datasets.Dataset.from_dict({"body": DOCS}).save_to_disk(tmp_path / "one")
    assert read_documents([tmp_path / "one"], text_field="body") == DOCS
    with pytest.raises(DataError, match="one Dataset without splits, so --split 'test' does not apply"):
        read_documents([tmp_path / "one"], text_field="body", split="test")


def test_an_unknown_split_lists_the_splits(saved_dict: Path, tmp_path: Path):
    with pytest.raises(DataError, match=r"no split 'test' \(splits: train, validation\)"):
        read_documents([saved_dict], split="test")
    _write(tmp_path / "plain.txt", "text")
    with pytest.raises(DataError, match="--split 'train' selects a split of a saved dataset"):
        read_documents([tmp_path / "plain.txt"], split="train")


@pytest.mark.parametrize("name, content, message", [
    ("m.jsonl.gz", '{"text": "ok"}\n{"body": "x"}\n', r"m\.jsonl\.gz, line 2: no field 'text'"),
    ("m.json", '[{"meta": {"body": "ok"}}, {"meta": {"x": 1}}]', r"m\.json, record 1: no field 'meta\.body'"),
    ("m.json", '{"data": [{"text": "a"}]}', r"m\.json: a \.json data file must hold one array of objects"),
    ("m.json.gz", '[{"text": "a"}, "b"]', r"must hold one array of objects"),
    ("m.jsonl", '{"text": "a"}\n["b"]\n', r"m\.jsonl, line 2: a JSON list, not an object"),
    ("m.jsonl.gz", '{"text": "a"}\n{"text": broken\n', r"m\.jsonl\.gz, line 2: not valid JSON"),
    ("m.csv", "id,body\n1,x\n", r"m\.csv: no field 'text' \(columns: id, body\)"),
])
def test_record_problems_are_named(tmp_path: Path, name, content, message):
    field = "meta.body" if "record 1" in message else "text"
    with pytest.raises(DataError, match=message):
        read_documents([_write(tmp_path / name, content)], text_field=field)


def test_parquet_problems_are_named(tmp_path: Path):
    _parquet(tmp_path / "ints.parquet", {"text": [1, 2]})
    with pytest.raises(DataError, match=r"ints\.parquet: field 'text' holds int64 values, not text"):
        read_documents([tmp_path / "ints.parquet"])
    _parquet(tmp_path / "nulls.parquet", {"text": ["a", None, "c", None]})
    with pytest.raises(DataError, match=r"nulls\.parquet, row 1: field 'text' is empty \(null\); 2 of 4"):
        read_documents([tmp_path / "nulls.parquet"])


@pytest.mark.parametrize("name, data, message", [
    ("broken.parquet", b"PAR1 not really", r"cannot read parquet file '.*broken\.parquet': ArrowInvalid"),
    ("broken.txt.gz", b"not gzip at all", r"broken\.txt\.gz' is not a valid gzip file"),
    ("broken.jsonl.gz", gzip.compress(b'{"text": "\xff"}'), r"broken\.jsonl\.gz' is not UTF-8 text"),
    ("x.parquet.gz", b"", "Parquet compresses itself"),
    ("header_only.csv", b"title,text\n", r"csv file '.*header_only\.csv' holds no rows"),
])
def test_unreadable_files_are_named(tmp_path: Path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=message):
        read_documents([tmp_path / name])


def test_reading_needs_no_network(tmp_path: Path):
    """With the hub unreachable by configuration, every format still reads (a fresh process, so
    ``datasets`` reads the offline switches at import)."""
    _parquet(tmp_path / "p.parquet", {"text": ["one"]})
    _write(tmp_path / "c.csv.gz", _csv(["two"]))
    _write(tmp_path / "j.jsonl.gz", _jsonl(["three"]))
    code = ("import sys; from thunderdlm.data.corpus import read_documents; "
            "print(read_documents(sys.argv[1:]))")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", code, *(str(tmp_path / n) for n in
                                                          ("p.parquet", "c.csv.gz", "j.jsonl.gz"))],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['one', 'two', 'three']"
    assert not (tmp_path / "hf").exists()   # nothing cached under the user's HF home
