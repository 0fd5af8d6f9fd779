"""Shared fixtures: one torch thread per test process, flushed denormals, tiny models."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("THUNDERDLM_THREADS", "1")
torch.set_num_threads(1)
torch.set_flush_denormal(True)


class OracleModel(torch.nn.Module):
    """A 'network' that knows the clean sequence: logits put `confidence` on x0 everywhere."""

    def __init__(self, x0: torch.Tensor, vocab: int, confidence: float = 30.0):
        super().__init__()
        self.x0, self.vocab, self.confidence = x0, vocab, confidence
        self.calls = 0
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma=None, *, causal=None, attn_mask=None, positions=None):
        self.calls += 1
        logits = torch.zeros(*x.shape, self.vocab)
        logits.scatter_(-1, self.x0[: x.shape[0], : x.shape[1]].unsqueeze(-1), self.confidence)
        return logits + 0 * self.dummy


class RandomModel(torch.nn.Module):
    """Deterministic pseudo-random logits that depend on the input (for sampler contract tests)."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab + 1, vocab, generator=g), requires_grad=False)
        self.vocab = vocab
        self.calls = 0

    def forward(self, x, sigma=None, *, causal=None, attn_mask=None, positions=None):
        self.calls += 1
        prev = torch.roll(x, 1, dims=1).clamp(max=self.vocab)
        return self.table[prev] + 0.1 * self.table[x.clamp(max=self.vocab)]


@pytest.fixture
def oracle_model():
    return OracleModel


@pytest.fixture
def random_model():
    return RandomModel


ROMEO = ("ROMEO:\nBut, soft! what light through yonder window breaks?\n"
         "It is the east, and Juliet is the sun.\n\n") * 60


@pytest.fixture(scope="module")
def romeo_root(tmp_path_factory):
    """A folder with ``corpus.txt`` (a short Shakespeare passage, repeated) prepared by the CLI into
    ``data/`` (char tokenizer): the corpus of the CLI-level tests, one per test module."""
    from thunderdlm.cli import main

    root = tmp_path_factory.mktemp("romeo")
    (root / "corpus.txt").write_text(ROMEO)
    assert main(["data", "prepare", "--text", str(root / "corpus.txt"), "--out", str(root / "data")]) == 0
    return root
