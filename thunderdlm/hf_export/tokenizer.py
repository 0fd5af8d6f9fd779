"""thunderdlm's tokenizers as a transformers ``PreTrainedTokenizerFast`` (``AutoTokenizer.from_pretrained
(DIR)`` of an export), with the row the process adds to the vocabulary as a special token.

- ``char``: a ``tokenizers`` WordLevel model over the characters, a pre-tokenizer that isolates
  every character (``[\\s\\S]``, newlines included) and the ``Fuse`` decoder (no spaces between).
- ``bpe``: its own ``tokenizer.json`` (``<|endoftext|>`` as bos / eos).
- ``word``: WordLevel over the words (``<unk>`` for unknown ones); the pre-tokenizer drops runs of
  spaces and tabs and isolates thunderdlm's tokens (specials, words with an apostrophe part,
  punctuation marks, newlines); the decoder reproduces thunderdlm's joining rule (a space before
  each token except punctuation, newlines and the token after a newline) with a marker character
  and regex replacements on the fused text (``<pad>`` decodes to nothing, as in thunderdlm).
- ``hf``: a copy of the pretrained tokenizer.

The extra row: ``mask_token`` ``<|mask|>`` for masked / block / score-entropy (absorbing) models,
a ``<|bos|>`` special token for autoregressive / teacher-forcing ones (the BOS row the network
reads at position 0). Its id must be the process's (the tokenizer's size): checked here. Encoding
ids equal thunderdlm's for every kind (tested), decoding too (``skip_special_tokens=False``,
``clean_up_tokenization_spaces=False``); a special token's text typed inside a prompt is read as
that token by transformers, but as characters by thunderdlm's char / word tokenizers.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from thunderdlm.data.tokenizers import Tokenizer, WordTokenizer
from thunderdlm.errors import TokenizerError

MASK_TOKEN = "<|mask|>"
BOS_TOKEN = "<|bos|>"
_MARK = "\u0001"            # word decoding: "a space may go here", resolved by the regexes below


def extra_token_role(process_name: str, extra_rows: int) -> str | None:
    """What the process's added row is: 'mask', 'bos' or None (no added row)."""
    if extra_rows == 0:
        return None
    if extra_rows != 1:
        raise TokenizerError(f"the {process_name} process adds {extra_rows} rows to the vocabulary; "
                             "the export knows one (a mask or BOS row)")
    return "bos" if process_name in ("autoregressive", "forcing") else "mask"


def to_transformers(tok: Tokenizer, role: str | None, model_max_length: int):
    """A ``PreTrainedTokenizerFast`` equal to ``tok`` plus the process's row (``role``) at id
    ``tok.vocab_size``."""
    from transformers import PreTrainedTokenizerFast

    if tok.kind == "hf":
        fast = copy.deepcopy(tok.backend)
        fast.clean_up_tokenization_spaces = False
    else:
        backend = {"char": _char_backend, "bpe": _bpe_backend, "word": _word_backend}[tok.kind](tok)
        specials = {}
        if tok.kind == "char" and tok.eos_id is not None:     # end-of-document id, after the chars
            specials = dict(eos_token=getattr(tok, "EOS", "<|endoftext|>"))
        elif tok.kind == "bpe":
            specials = dict(bos_token=tok.SPECIAL, eos_token=tok.SPECIAL)
        elif tok.kind == "word":
            specials = dict(pad_token="<pad>", unk_token="<unk>", bos_token="<start>", eos_token="<end>")
        fast = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                       **specials)
    fast.model_max_length = model_max_length
    if role == "mask":
        fast.add_special_tokens({"mask_token": MASK_TOKEN})
        added = fast.mask_token_id
    elif role == "bos":
        fast.add_special_tokens({"additional_special_tokens": [BOS_TOKEN]})
        added = fast.convert_tokens_to_ids(BOS_TOKEN)
        if fast.bos_token is None:
            fast.bos_token = BOS_TOKEN
    else:
        return fast
    if added != tok.vocab_size:
        raise TokenizerError(f"the exported tokenizer put its {role} token at id {added}, not at "
                             f"{tok.vocab_size} where the network has it (a {tok.kind} tokenizer whose "
                             f"vocabulary already holds '{MASK_TOKEN if role == 'mask' else BOS_TOKEN}'?)")
    return fast


def _char_backend(tok):
    from tokenizers import Regex, Tokenizer as Backend, decoders, models, pre_tokenizers

    backend = Backend(models.WordLevel({c: i for i, c in enumerate(tok.chars)}, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return backend


def _bpe_backend(tok):
    from tokenizers import Tokenizer as Backend

    return Backend.from_str(tok.backend.to_str())


def _word_backend(tok):
    from tokenizers import Regex, Tokenizer as Backend, decoders, models, pre_tokenizers

    specials = "|".join(re.escape(s) for s in WordTokenizer.SPECIALS)
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(tok.words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),       # spaces, tabs
        pre_tokenizers.Split(Regex(specials + r"|\w+(?:'\w+)?|[^\w\s]|\n"), behavior="isolated")])
    m = _MARK
    backend.decoder = decoders.Sequence([
        decoders.Replace(Regex("^"), m),                                      # mark before each token
        decoders.Fuse(),
        decoders.Replace(Regex(m + r"<pad>(?=" + m + "|$)"), ""),               # pads: dropped
        decoders.Replace(Regex(m + r"(?=[^\w\s" + m + r"](?:" + m + r"|$))"), ""),  # punctuation
        decoders.Replace(Regex(m + r"(?=\n)"), ""),                            # a newline
        decoders.Replace(Regex(r"(?<=\n)" + m), ""),                           # after a newline
        decoders.Replace(Regex("^" + m), ""),                                  # the first token
        decoders.Replace(m, " ")])
    return backend


def save(fast, folder: Path) -> None:
    """``save_pretrained`` with ``tokenizer_class`` PreTrainedTokenizerFast (transformers 5 writes its
    own backend's name, which older versions do not know)."""
    fast.save_pretrained(str(folder))
    path = Path(folder) / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
