"""Sample-quality metrics that need no model: entropy, distinct-n, repetition, BLEU.

Everything here is tokenizer independent, so samples of a char-level model and of a BPE model
compare directly:

- ``unigram_entropy``  H(c) = −Σ_c p(c) log p(c), nats, of the empirical distribution of characters
  pooled over all texts. Degenerate samples ("the the the") have a low entropy; Shakespeare's text
  has about 3.0 nats.
- ``bigram_entropy``   the entropy, nats, of the pooled empirical distribution of character pairs
  (c_i, c_{i+1}) taken inside each text (never across two texts). It is a *joint* entropy:
  ``bigram_entropy − unigram_entropy`` approximates the conditional entropy of the next character.
- ``distinct_n`` (n = 1..4)  #unique word n-grams / #word n-grams, pooled over all texts (words =
  whitespace-separated). 1.0 = no n-gram ever repeats; a model that writes the same phrase in every
  sample scores low even if each sample alone looks varied.
- ``repetition_rate``  per text, the fraction of word 4-gram *occurrences* whose 4-gram occurs more
  than once in that same text; averaged over the texts that have at least one 4-gram. A text that
  loops on one phrase scores 1.0, a text without repeats 0.0.
- ``mean_length_chars``  mean number of characters (Unicode code points) per text.

A value that is undefined (no characters, no n-gram of that order in any text) is ``nan``, not 0,
so that "nothing to measure" cannot pass for "perfectly repetitive".

``real_word_fraction`` is the share of the words (``[A-Za-z']+``, lower-cased) of some texts that
occur in a vocabulary, e.g. the training text's: a tokenizer-independent "is it English /
Shakespeare's vocabulary" check of generated text.

``bleu`` wraps sacrebleu's corpus BLEU (13a tokenisation, exponential smoothing): 100 for identical
text, about 0 for text sharing no n-gram with the references.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

from thunderdlm.errors import ThunderError

NAN = float("nan")
MAX_N = 4


class MetricsError(ThunderError, ValueError):
    """Sample metrics were asked for on impossible input (no texts, mismatched references...)."""


def entropy(counts: Counter) -> float:
    """Entropy (nats) of the empirical distribution given by ``counts``; nan when it is empty."""
    total = sum(counts.values())
    if total == 0:
        return NAN
    return -sum(c / total * math.log(c / total) for c in counts.values())


def ngrams(items: Sequence, n: int) -> Iterable[tuple]:
    """Consecutive n-tuples of ``items`` (none when it is shorter than n)."""
    return zip(*(items[i:] for i in range(n)))


def distinct_n(word_lists: list[list[str]], n: int) -> float:
    """#unique / #total word n-grams, pooled over texts; nan when no text has n words."""
    pooled: Counter = Counter()
    for words in word_lists:
        pooled.update(ngrams(words, n))
    total = sum(pooled.values())
    return len(pooled) / total if total else NAN


def repetition_rate(word_lists: list[list[str]], n: int = 4) -> float:
    """Mean over texts of the fraction of n-gram occurrences repeated within the same text."""
    rates = []
    for words in word_lists:
        counts = Counter(ngrams(words, n))
        total = sum(counts.values())
        if total:
            rates.append(sum(c for c in counts.values() if c > 1) / total)
    return sum(rates) / len(rates) if rates else NAN


def sample_metrics(texts: list[str]) -> dict[str, float]:
    """Entropies, distinct-1..4, repetition rate and mean length of ``texts`` (see module doc)."""
    if isinstance(texts, str) or not texts:
        raise MetricsError("sample_metrics needs a non-empty list of texts")
    chars: Counter = Counter()
    pairs: Counter = Counter()
    for text in texts:
        chars.update(text)
        pairs.update(ngrams(text, 2))
    word_lists = [text.split() for text in texts]
    out = {"unigram_entropy": entropy(chars), "bigram_entropy": entropy(pairs)}
    for n in range(1, MAX_N + 1):
        out[f"distinct_{n}"] = distinct_n(word_lists, n)
    out["repetition_rate"] = repetition_rate(word_lists, MAX_N)
    out["mean_length_chars"] = sum(len(t) for t in texts) / len(texts)
    return out


_WORD = re.compile(r"[A-Za-z']+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (runs of letters and apostrophes, apostrophes stripped)."""
    return [w.strip("'").lower() for w in _WORD.findall(text) if w.strip("'")]


def real_word_fraction(texts: list[str], vocabulary: set[str]) -> tuple[float, int]:
    """(share of the words of ``texts`` found in ``vocabulary``, number of words); nan if none."""
    found = [w in vocabulary for text in texts for w in words(text)]
    return (sum(found) / len(found) if found else NAN), len(found)


def bleu(hypotheses: list[str], references: list[str] | list[list[str]], *,
         tokenize: str = "13a") -> dict[str, float]:
    """Corpus BLEU of ``hypotheses`` against their references, with sacrebleu.

    ``references[i]`` is the reference of ``hypotheses[i]`` (a string), or the list of its
    references (every hypothesis needs the same number). Returns ``score`` (0..100),
    ``precision_1..4`` (percent), ``brevity_penalty``, ``hyp_len`` and ``ref_len`` (tokens).
    """
    try:
        import sacrebleu
    except ImportError:
        raise MetricsError("BLEU needs the sacrebleu package: pip install sacrebleu") from None
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise MetricsError("bleu takes lists of strings, not a single string")
    if not hypotheses or len(references) != len(hypotheses):
        raise MetricsError(f"bleu needs one reference (or list of references) per hypothesis: got "
                           f"{len(hypotheses)} hypotheses and {len(references)} references")
    per_hyp = [[r] if isinstance(r, str) else list(r) for r in references]
    k = len(per_hyp[0])
    if k == 0 or any(len(r) != k for r in per_hyp):
        raise MetricsError("every hypothesis needs the same (non-zero) number of references")
    streams = [[refs[j] for refs in per_hyp] for j in range(k)]     # sacrebleu: k streams of len(hyps)
    res = sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize=tokenize)
    out = {"score": float(res.score)}
    out.update({f"precision_{i + 1}": float(p) for i, p in enumerate(res.precisions)})
    out.update(brevity_penalty=float(res.bp), hyp_len=float(res.sys_len), ref_len=float(res.ref_len))
    return out
