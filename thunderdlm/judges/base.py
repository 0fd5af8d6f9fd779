"""A judge: a causal language model that scores texts, for generative perplexity.

Notation: a text is tokenised by the judge into x = (x_1..x_n) (no special tokens); the judge
reads BOS + x and

    nats(text) = Σ_i −log p(x_i | BOS, x_<i)          (every text token is scored, BOS never)

    nats_per_token = Σ_texts nats / Σ_texts n         (the judge's own tokens: "generative PPL" is
                                                       exp(nats_per_token))
    nats_per_char  = Σ_texts nats / Σ_texts len(text) (Unicode code points: tokenizer independent,
                                                       so judges and models of any tokenizer compare)

No end-of-text token is scored: a sample is a window cut out of a longer stream, not a document.

Long texts. A judge reads at most ``window`` text tokens after its BOS in one forward. A longer text
is scored in overlapping windows that start every ``stride`` tokens (``window // 2`` by default):
the first window scores its tokens 0..window−1; each later window [b, b + window) scores only the
tokens no earlier window scored. So every token is scored exactly once, and every token after the
first window is predicted from at least ``window − stride`` tokens of context. Each window starts
again with BOS (the way both kinds of judge saw text in training: a window cut at a random place).

Batching. The windows of all texts are sorted by length, cut into batches of ``batch_size``, padded
on the right and masked. The judges are causal, so padding to the right of a token cannot change
its probability: a text's score does not depend on which texts share its batch (tested to 1e-4).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

import torch

from thunderdlm.errors import ThunderError


class JudgeError(ThunderError):
    """Unknown judge spec, missing wheel or file, a run that cannot judge, text it cannot read."""


@dataclass
class JudgeScore:
    nats_per_char: float      # total nats / total characters
    nats_per_token: float     # total nats / total judge tokens
    chars: int
    tokens: int
    per_text: list[dict] = field(default_factory=list)   # each {"nats", "chars", "tokens"}

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        """Generative perplexity per judge token, exp(nats_per_token)."""
        return math.exp(self.nats_per_token)

    def to_dict(self, per_text: bool = False) -> dict:
        out = asdict(self)
        if not per_text:
            out.pop("per_text")
        out.update(bits_per_char=self.bits_per_char, perplexity=self.perplexity)
        return out


def plan_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) of each window over n tokens; see the module doc.

    The scored ranges [first_scored, end) tile [0, n) exactly once.
    """
    if window < 1 or not 1 <= stride <= window:
        raise JudgeError(f"need window ≥ 1 and 1 ≤ stride ≤ window, got window={window}, stride={stride}")
    out, done, begin = [], 0, 0
    while done < n:
        end = min(begin + window, n)
        out.append((begin, end, done))
        done, begin = end, begin + stride
    return out


class Judge(ABC):
    """Scores texts with a causal LM; subclasses give the tokenizer and one batched forward."""

    name: str = "judge"
    window: int = 1           # most text tokens per forward (BOS not counted)
    stride: int = 1           # tokens between the starts of two windows of one long text
    pad_id: int = 0           # any valid id: right padding is never read by a causal judge
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The judge's token ids of ``text``, without BOS / special tokens."""

    @abstractmethod
    def token_logprobs(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) log p(x_j | BOS, x_<j) for x (B, T) right-padded, mask (B, T) True on real tokens.

        Values at padded positions are ignored by the caller.
        """

    def _encode(self, i: int, text: str) -> list[int]:
        if not isinstance(text, str):
            raise JudgeError(f"judge {self.name}: text {i} is a {type(text).__name__}, not a str")
        try:
            return self.encode(text)
        except ThunderError as e:
            raise JudgeError(f"judge {self.name} cannot read text {i}: {e}") from None

    @torch.no_grad()
    def score(self, texts: list[str], batch_size: int = 8) -> JudgeScore:
        """Judge NLL of ``texts``: totals per character and per judge token, and per text."""
        if isinstance(texts, str) or not texts:
            raise JudgeError(f"judge {self.name}: score() needs a non-empty list of texts")
        if batch_size < 1:
            raise JudgeError(f"judge {self.name}: batch_size must be ≥ 1, got {batch_size}")
        segments = []                                  # (text index, window ids, first scored offset)
        lengths = []
        for i, text in enumerate(texts):
            ids = self._encode(i, text)
            lengths.append(len(ids))
            for begin, end, first in plan_windows(len(ids), self.window, self.stride):
                segments.append((i, ids[begin:end], first - begin))
        nats = [0.0] * len(texts)
        order = sorted(range(len(segments)), key=lambda k: -len(segments[k][1]))
        for lo in range(0, len(order), batch_size):
            chunk = [segments[k] for k in order[lo:lo + batch_size]]
            T = len(chunk[0][1])
            x = torch.full((len(chunk), T), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.bool)
            for row, (_, ids, _) in enumerate(chunk):
                x[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[row, :len(ids)] = True
            logp = self.token_logprobs(x.to(self.device), mask.to(self.device)).double().cpu()   # (B, T)
            for row, (i, ids, first) in enumerate(chunk):
                nats[i] -= logp[row, first:len(ids)].sum().item()
        chars = sum(len(t) for t in texts)
        tokens = sum(lengths)
        if tokens == 0 or chars == 0:
            raise JudgeError(f"judge {self.name}: all {len(texts)} texts are empty; nothing to score")
        per_text = [{"nats": n, "chars": len(t), "tokens": k} for n, t, k in zip(nats, texts, lengths)]
        return JudgeScore(sum(nats) / chars, sum(nats) / tokens, chars, tokens, per_text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, window={self.window}, stride={self.stride})"
