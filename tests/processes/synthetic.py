"""Synthetic sources of known entropy shared by the process tests."""
import torch


def iid_source(vocab: int, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, float]:
    """A skewed categorical distribution π over ``vocab`` tokens (an i.i.d. source) and its entropy."""
    g = torch.Generator().manual_seed(seed)
    pi = torch.rand(vocab, generator=g, dtype=dtype) ** 3 + 0.02
    pi = pi / pi.sum()
    return pi, float(-(pi * pi.log()).sum())
