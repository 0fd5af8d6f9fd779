"""Tokenizers: one small interface, four kinds.

- ``char``: one id per character of the training corpus (Shakespeare: 84 symbols), plus an
  end-of-document token ``<|endoftext|>`` when the corpus has several documents;
- ``bpe``:  byte-level BPE trained with Hugging Face ``tokenizers`` (``<|endoftext|>`` = bos/eos);
- ``word``: whitespace/punctuation words by frequency with ``<pad> <unk> <start> <end>`` (lossy);
- ``hf``:   a pretrained tokenizer from a local folder or a GGUF file, via ``transformers``.

Every tokenizer saves itself into a folder together with ``tokenizer_meta.json`` (kind, special
ids, vocabulary size, fingerprint); :func:`load_tokenizer` reads any of them back. The
:meth:`Tokenizer.fingerprint` hashes the kind and the full vocabulary, so a checkpoint can tell
when it is paired with a different tokenizer than the one it was trained with.
"""
from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np

from thunderdlm.errors import TokenizerError

META_FILE = "tokenizer_meta.json"
KINDS = ("char", "bpe", "word", "hf")
DEFAULT_BPE_VOCAB = 4096
MAX_VOCAB = 2**20          # the largest vocabulary a tokenizer may be trained to (Gemma's is 256k)


class Tokenizer(ABC):
    """Text <-> token ids. Special ids are ``None`` when the tokenizer has no such token."""

    kind: ClassVar[str]
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id is in ``[0, vocab_size)``."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no bos/eos added)."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids."""

    @abstractmethod
    def vocabulary(self) -> list[str]:
        """Every token string, indexed by id (what :meth:`fingerprint` hashes)."""

    @abstractmethod
    def _save_files(self, folder: Path) -> None:
        """Write the kind-specific files into ``folder``."""

    @classmethod
    @abstractmethod
    def _load(cls, folder: Path, meta: dict[str, Any]) -> Tokenizer:
        """Rebuild the tokenizer from the files :meth:`_save_files` wrote."""

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as an int64 array (subclasses may do this faster)."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text, as int64 arrays (BPE and hf encode a batch in parallel in Rust)."""
        return [self.encode_array(text) for text in texts]

    def token_str(self, token_id: int) -> str:
        """Display form of one token (used for live display while sampling)."""
        return self.decode([token_id])

    @property
    def eos_text(self) -> str | None:
        """The eos token as text (used to separate documents), or None without an eos token."""
        return None if self.eos_id is None else self.vocabulary()[self.eos_id]

    def special_ids(self) -> dict[str, int | None]:
        return {"bos_id": self.bos_id, "eos_id": self.eos_id,
                "pad_id": self.pad_id, "unk_id": self.unk_id}

    def fingerprint(self) -> str:
        """sha256 hex digest of the kind and the full vocabulary; stable across save/load."""
        payload = json.dumps([self.kind, self.vocabulary()], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def save(self, folder: str | Path) -> Path:
        """Write the tokenizer files and ``tokenizer_meta.json`` into ``folder`` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_files(folder)
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, **self.special_ids(),
                "fingerprint": self.fingerprint()}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return folder

    def _check_ids(self, ids: list[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"cannot decode ids {bad[:10]}: the {self.kind} tokenizer only has "
                                 f"ids 0..{self.vocab_size - 1}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------------------------
# char
# ----------------------------------------------------------------------------------------------

class CharTokenizer(Tokenizer):
    """One id per character; the vocabulary is the sorted set of characters of the training text.

    There is no ``<unk>``: text with a character outside the vocabulary is *rejected* with a
    TokenizerError listing the characters, rather than silently mapped to a stand-in, because the
    char vocabulary comes from the training corpus and a model has never seen anything else.

    With ``eos=True`` one more id, ``len(chars)``, is the end-of-document token ``<|endoftext|>``:
    data preparation puts it between documents so a model learns where text ends (and sampling
    stops there). It is never produced by :meth:`encode` — the characters ``<|endoftext|>`` in a
    text stay characters — and decodes to its name. A folder saved without it (every char folder
    before end-of-document tokens existed) loads as before, with ``eos_id = None``.
    """

    kind = "char"
    EOS = "<|endoftext|>"

    def __init__(self, chars: Iterable[str], eos: bool = False):
        self.chars: list[str] = sorted(set(chars))
        if not self.chars or any(not isinstance(c, str) or len(c) != 1 for c in self.chars):
            raise TokenizerError("a char tokenizer needs a non-empty list of single characters")
        self.eos_id = len(self.chars) if eos else None
        # lookup table over code points: table[ord(c)] = id, -1 for unknown; the last slot
        # (max code point + 1) catches every code point above the vocabulary.
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._table = np.full(int(codes.max()) + 2, -1, dtype=np.int64)
        self._table[codes] = np.arange(len(codes))

    @classmethod
    def from_text(cls, text: str, eos: bool = False) -> CharTokenizer:
        if not text:
            raise TokenizerError("cannot build a char tokenizer from an empty text")
        return cls(set(text), eos=eos)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + (self.eos_id is not None)

    def vocabulary(self) -> list[str]:
        return list(self.chars) + ([self.EOS] if self.eos_id is not None else [])

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised encode: code points via UTF-32, then one table lookup (5M chars in ~0.1 s)."""
        try:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (n,)
        except UnicodeEncodeError as e:  # a lone surrogate, e.g. from badly decoded bytes
            raise TokenizerError(f"text has an invalid character {text[e.start]!r} at position "
                                 f"{e.start}; fix the text's encoding") from None
        codes = np.minimum(codes, len(self._table) - 1)
        ids = self._table[codes]  # (n,) int64, -1 where unknown
        if ids.size and ids.min() < 0:
            self._raise_unknown(text, ids)
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else self.EOS for i in ids)   # id n: the eos token

    def _raise_unknown(self, text: str, ids: np.ndarray) -> None:
        positions = np.flatnonzero(ids < 0)
        unknown = sorted({text[p] for p in positions.tolist()})
        shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise TokenizerError(f"text contains {len(unknown)} character(s) outside the char vocabulary: "
                             f"{shown}; the char vocabulary comes from the training corpus, so remove "
                             "these characters or use a bpe/hf tokenizer")

    def _save_files(self, folder: Path) -> None:
        (folder / "chars.json").write_text(json.dumps(self.chars, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def _load(cls, folder: Path, meta: dict[str, Any]) -> CharTokenizer:
        tokenizer = cls(_read_json(folder / "chars.json"), eos=meta.get("eos_id") is not None)
        if meta.get("eos_id") not in (None, tokenizer.eos_id):   # the eos id follows the characters
            raise TokenizerError(f"tokenizer folder '{folder}': eos_id {meta['eos_id']} in {META_FILE} "
                                 f"is not {tokenizer.eos_id} (one past the characters); prepare the data again")
        return tokenizer


# ----------------------------------------------------------------------------------------------
# bpe
# ----------------------------------------------------------------------------------------------

class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style) trained with Hugging Face ``tokenizers``; lossless round trip.

    ``<|endoftext|>`` (id 0) is both the bos and the eos token; it is recognised when it appears
    in the text, so documents joined with it encode to the eos id.
    """

    kind = "bpe"
    SPECIAL = "<|endoftext|>"

    def __init__(self, backend: Any):
        self.backend = backend  # a tokenizers.Tokenizer
        special = backend.token_to_id(self.SPECIAL)
        if special is None:
            raise TokenizerError(f"the BPE tokenizer has no {self.SPECIAL} token; retrain it")
        self.bos_id = self.eos_id = special

    @classmethod
    def train(cls, texts: list[str], vocab_size: int = DEFAULT_BPE_VOCAB) -> BPETokenizer:
        """Train on ``texts``; the result may be smaller than ``vocab_size`` on a tiny corpus."""
        from tokenizers import Tokenizer as Backend, decoders, models, pre_tokenizers, trainers

        if vocab_size < 258:
            raise TokenizerError(f"vocab_size={vocab_size} is too small for byte-level BPE: it needs "
                                 "at least 258 (256 bytes, <|endoftext|> and one merge)")
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[cls.SPECIAL],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def vocabulary(self) -> list[str]:
        return _vocab_list(self.backend.get_vocab(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)   # parallel in Rust
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        return self.backend.decode(ids, skip_special_tokens=False)

    def _save_files(self, folder: Path) -> None:
        self.backend.save(str(folder / "tokenizer.json"))

    @classmethod
    def _load(cls, folder: Path, meta: dict[str, Any]) -> BPETokenizer:
        from tokenizers import Tokenizer as Backend

        path = folder / "tokenizer.json"
        _read(path)  # clean error when missing
        try:
            return cls(Backend.from_file(str(path)))
        except Exception as e:  # the Rust side raises plain Exceptions for malformed files
            raise TokenizerError(f"tokenizer file '{path}' is corrupt ({e}); "
                                 "prepare the data again") from None


# ----------------------------------------------------------------------------------------------
# word
# ----------------------------------------------------------------------------------------------

class WordTokenizer(Tokenizer):
    """Word-level tokenizer ("SimpleTokenizer"): words, punctuation marks and newlines are tokens.

    Ids 0-3 are ``<pad> <unk> <start> <end>``; then words by decreasing frequency (ties
    alphabetically). Unknown words encode to ``<unk>``. Decoding is *lossy*: tokens are joined
    with single spaces, except that no space goes before punctuation or around newlines, so
    ``"Nay , sir"``-style spacing, runs of spaces and tabs are not preserved.
    """

    kind = "word"
    SPECIALS = ("<pad>", "<unk>", "<start>", "<end>")
    _TOKEN = re.compile("|".join(re.escape(s) for s in SPECIALS) + r"|\w+(?:'\w+)?|[^\w\s]|\n")
    _PUNCT = re.compile(r"[^\w\s]")

    def __init__(self, words: Iterable[str]):
        self.words: list[str] = list(self.SPECIALS) + [w for w in words if w not in self.SPECIALS]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, 1, 2, 3

    @classmethod
    def tokenize(cls, text: str) -> list[str]:
        """Split text into word, punctuation, newline and special tokens."""
        return cls._TOKEN.findall(text)

    @classmethod
    def build_vocab(cls, texts: Iterable[str], max_size: int | None = None,
                    min_freq: int = 1) -> WordTokenizer:
        """Vocabulary of words seen ``>= min_freq`` times; ``max_size`` counts the 4 specials."""
        if max_size is not None and max_size <= len(cls.SPECIALS):
            raise TokenizerError(f"vocab_size={max_size} leaves no room for words: a word tokenizer "
                                 f"needs more than {len(cls.SPECIALS)} ids")
        counts = Counter(tok for text in texts for tok in cls.tokenize(text))
        for special in cls.SPECIALS:
            counts.pop(special, None)
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(cls.SPECIALS)]
        return cls(words)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def vocabulary(self) -> list[str]:
        return list(self.words)

    def encode(self, text: str) -> list[int]:
        unk = self.unk_id
        return [self.index.get(tok, unk) for tok in self.tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids if int(i) != self.pad_id]
        self._check_ids(ids)
        parts: list[str] = []
        previous = "\n"  # no space before the first token
        for token in (self.words[i] for i in ids):
            glued = token == "\n" or previous == "\n" or self._PUNCT.fullmatch(token) is not None
            parts.append(token if glued else " " + token)
            previous = token
        return "".join(parts)

    def token_str(self, token_id: int) -> str:
        self._check_ids([int(token_id)])
        return self.words[int(token_id)]

    def _save_files(self, folder: Path) -> None:
        (folder / "vocab.json").write_text(json.dumps(self.words, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def _load(cls, folder: Path, meta: dict[str, Any]) -> WordTokenizer:
        words = _read_json(folder / "vocab.json")
        if not isinstance(words, list) or words[: len(cls.SPECIALS)] != list(cls.SPECIALS):
            raise TokenizerError(f"'{folder / 'vocab.json'}' does not start with {cls.SPECIALS}; "
                                 "prepare the data again")
        return cls(words[len(cls.SPECIALS):])


# ----------------------------------------------------------------------------------------------
# hf
# ----------------------------------------------------------------------------------------------

class HFTokenizer(Tokenizer):
    """A pretrained Hugging Face tokenizer, loaded offline from a folder or a ``.gguf`` file."""

    kind = "hf"

    def __init__(self, backend: Any):
        self.backend = backend  # a transformers tokenizer
        self.bos_id = backend.bos_token_id
        self.eos_id = backend.eos_token_id
        self.pad_id = backend.pad_token_id
        self.unk_id = backend.unk_token_id

    @classmethod
    def from_path(cls, path: str | Path) -> HFTokenizer:
        """Load from a tokenizer folder or a GGUF file, never touching the network."""
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.exists():
            raise TokenizerError(f"hf tokenizer path '{path}' does not exist; pass a local tokenizer "
                                 "folder (with tokenizer.json) or a .gguf file")
        try:
            if path.is_file():
                backend = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                                        local_files_only=True)
            else:
                backend = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, ImportError) as e:
            raise TokenizerError(f"cannot load a tokenizer from '{path}': {e}") from None
        return cls(backend)

    @property
    def vocab_size(self) -> int:
        return len(self.backend)

    def vocabulary(self) -> list[str]:
        return _vocab_list(self.backend.get_vocab())

    def encode(self, text: str) -> list[int]:
        # verbose=False: no "sequence longer than the model's maximum" warning on a whole corpus
        return list(self.backend.encode(text, add_special_tokens=False, verbose=False))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # a fast (Rust) tokenizer encodes the batch in parallel; a slow one loops in Python
        ids = self.backend(texts, add_special_tokens=False, verbose=False,
                           return_attention_mask=False)["input_ids"]
        return [np.asarray(row, dtype=np.int64) for row in ids]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        return self.backend.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _save_files(self, folder: Path) -> None:
        self.backend.save_pretrained(str(folder))

    @classmethod
    def _load(cls, folder: Path, meta: dict[str, Any]) -> HFTokenizer:
        return cls.from_path(folder)


# ----------------------------------------------------------------------------------------------
# factory
# ----------------------------------------------------------------------------------------------

_CLASSES: dict[str, type[Tokenizer]] = {c.kind: c for c in (CharTokenizer, BPETokenizer, WordTokenizer,
                                                            HFTokenizer)}


def train_tokenizer(kind: str, texts: list[str], vocab_size: int | None = None,
                    hf_path: str | Path | None = None) -> Tokenizer:
    """Fit a ``char``/``bpe``/``word`` tokenizer on ``texts``, or load an ``hf`` one from ``hf_path``.

    ``vocab_size`` is ignored for ``char`` (its size is the number of distinct characters) and
    ``hf``; ``bpe`` defaults to 4096 and ``word`` to every word seen.
    """
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "hf":
        if not hf_path:
            raise TokenizerError("tokenizer kind 'hf' needs `hf_path`: a local tokenizer folder "
                                 "or .gguf file")
        return HFTokenizer.from_path(hf_path)
    if kind == "char":
        return CharTokenizer.from_text("".join(texts))
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size or DEFAULT_BPE_VOCAB)
    return WordTokenizer.build_vocab(texts, max_size=vocab_size)


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """Load a tokenizer saved with :meth:`Tokenizer.save`; checks its fingerprint."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise TokenizerError(f"'{folder}' is not a saved tokenizer folder: {META_FILE} is missing; "
                             "prepare the data again")
    try:
        meta = _read_json(folder / META_FILE)
        kind = meta["kind"]
    except (TokenizerError, KeyError, TypeError):
        raise TokenizerError(f"tokenizer folder '{folder}' has a corrupt {META_FILE}; "
                             "prepare the data again") from None
    if kind not in _CLASSES:
        raise TokenizerError(f"tokenizer folder '{folder}' has unknown kind {kind!r} "
                             f"(expected one of {', '.join(KINDS)})")
    tokenizer = _CLASSES[kind]._load(folder, meta)
    expected = meta.get("fingerprint")
    if expected is not None and expected != tokenizer.fingerprint():
        raise TokenizerError(f"tokenizer folder '{folder}': the files do not match the fingerprint "
                             f"in {META_FILE} (edited or mixed files); prepare the data again")
    return tokenizer


def _read(path: Path) -> str:
    """Text of a tokenizer file, or a TokenizerError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file '{path}' is missing; the folder '{path.parent}' is not "
                             "a saved tokenizer (prepare the data again)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer file '{path}': {e}") from None


def _read_json(path: Path) -> Any:
    """Parsed JSON of a tokenizer file, or a TokenizerError naming it."""
    try:
        return json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"tokenizer file '{path}' is not valid JSON ({e.msg}, line {e.lineno}); "
                             "prepare the data again") from None


def _vocab_list(vocab: dict[str, int]) -> list[str]:
    """``{token: id}`` as a list indexed by id (unused ids become empty strings)."""
    tokens = [""] * (max(vocab.values()) + 1 if vocab else 0)
    for token, index in vocab.items():
        tokens[index] = token
    return tokens
