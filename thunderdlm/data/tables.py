"""Tabular sources read through Hugging Face ``datasets``: CSV and Parquet files, saved datasets.

Everything here is offline: ``Dataset.from_csv`` / ``from_parquet`` run the packaged builders on
the local file (no hub lookup), ``load_from_disk`` memory-maps a folder written by
``save_to_disk``. ``datasets`` is imported only when such a source is read, so ``import thunderdlm``
stays fast.

Cache: the CSV / Parquet builders convert the file to Arrow in a ``cache_dir``; we give them a
temporary folder (under ``$TMPDIR``) and ``keep_in_memory=True``, so the table lives in memory, the
folder is deleted right after, and nothing is left in ``~/.cache/huggingface`` — and a stale cache
keyed on a path can never be read back. Preparing a corpus reads it once, so a persistent cache
would only cost disk. A saved dataset needs no cache (it is already Arrow).

The text of a record is the column ``text_field``; a dotted path (``meta.body``) names a field of a
nested struct column, the way ``Dataset.flatten`` names it. A missing column, a column that is not
text, or a null (empty) cell is a :class:`~thunderdlm.errors.DataError` naming the file, and the row.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator

from thunderdlm.errors import DataError

DICT_FILE = "dataset_dict.json"           # save_to_disk of a DatasetDict (one sub-folder per split)
DATASET_FILES = ("state.json", "dataset_info.json")   # save_to_disk of one Dataset
DEFAULT_SPLIT = "train"


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / DICT_FILE).is_file()
                              or all((path / name).is_file() for name in DATASET_FILES))


def has_splits(path: Path) -> bool:
    """Whether the saved dataset at ``path`` is a DatasetDict (has named splits)."""
    return (path / DICT_FILE).is_file()


def saved_dataset_documents(path: Path, text_field: str, split: str | None) -> list[str]:
    """One document per row of a saved dataset: of ``split`` (default ``train``) for a DatasetDict."""
    datasets = _import_datasets()
    with _quiet(datasets):
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:   # datasets/pyarrow raise many types for a damaged folder
            raise DataError(f"cannot load saved dataset '{path}': {_root_cause(e)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded.keys())
        chosen = split or DEFAULT_SPLIT
        if chosen not in loaded:
            hint = "" if split else "; choose one with --split"
            raise DataError(f"saved dataset '{path}' has no split {chosen!r} (splits: "
                            f"{', '.join(names)}){hint}")
        return _texts(loaded[chosen], text_field, f"{path} (split {chosen})")
    if split is not None:
        raise DataError(f"saved dataset '{path}' is one Dataset without splits, so --split {split!r} "
                        "does not apply; drop --split")
    return _texts(loaded, text_field, str(path))


def file_documents(file: Path, fmt: str, text_field: str) -> list[str]:
    """One document per row of a ``csv`` or ``parquet`` file (``.csv.gz`` is decompressed)."""
    datasets = _import_datasets()
    with _quiet(datasets), tempfile.TemporaryDirectory(prefix="thunderdlm-datasets-") as cache:
        try:
            if fmt == "csv":
                # na_filter=False: a cell "NA", "None" or "" stays that text (pandas would make it
                # null); the converter keeps a text column of digits as strings.
                table = datasets.Dataset.from_csv(str(file), cache_dir=cache, keep_in_memory=True,
                                                  na_filter=False, converters={text_field: str})
            else:
                table = datasets.Dataset.from_parquet(str(file), cache_dir=cache, keep_in_memory=True)
        except Exception as e:   # pandas / pyarrow / datasets each raise their own types
            if "corresponds to no data" in str(e):      # datasets' words for a file of no rows
                raise DataError(f"{fmt} file '{file}' holds no rows (a header at most); add rows "
                                "or remove it from the data paths") from None
            raise DataError(f"cannot read {fmt} file '{file}': {_root_cause(e)}") from None
    return _texts(table, text_field, str(file))


def _texts(dataset: Any, text_field: str, where: str) -> list[str]:
    """The ``text_field`` column of a Dataset as Python strings, checked."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]          # a pyarrow Table (zero-copy for a saved dataset)
    while text_field not in table.column_names and any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()                       # struct column meta → meta.body, meta.id, ...
    if text_field not in table.column_names:
        raise DataError(f"{where}: no field '{text_field}' (columns: {', '.join(table.column_names)}); "
                        "set --text-field to the one that holds the text (meta.body for a nested field)")
    column = table.column(text_field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"{where}: field '{text_field}' holds {column.type} values, not text; "
                        "set --text-field to the field that holds the text")
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise DataError(f"{where}, row {row}: field '{text_field}' is empty (null); "
                        f"{column.null_count} of {len(column)} rows have no text: drop them or fill them")
    return column.to_pylist()


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError("reading CSV, Parquet or saved datasets needs Hugging Face 'datasets': "
                        "pip install 'datasets>=3'") from None
    return datasets


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No ``datasets`` progress bars or logs while reading: its errors come back as our DataError."""
    bars = datasets.is_progress_bar_enabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _root_cause(error: BaseException) -> str:
    """The innermost cause's first line (datasets wraps the reader's error in its own)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
