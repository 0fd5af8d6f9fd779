"""Likelihood evaluation: the validation NLL bound with its standard error.

Each window gets ``t_samples`` independent Monte Carlo draws of the process's NELBO (nats per
token); its mean over draws is one observation, and the reported standard error is the spread of
those per-window means over windows / sqrt(#windows) — it covers both the data and the t/mask noise.
Bits per character convert through the validation split's tokens-per-character ratio, so that
tokenizers with different granularity compare.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from thunderdlm.processes.base import Process


@torch.no_grad()
def likelihood_bound(process: Process, model: nn.Module, windows: torch.Tensor, *, t_samples: int = 1,
                     batch_size: int = 64, generator: torch.Generator | None = None,
                     chars_per_token: float = 1.0) -> dict:
    """NELBO of ``windows`` (N, L): mean nats/token, stderr, bits/char and the sample counts."""
    was_training = model.training
    model.eval()
    per_window = torch.zeros(windows.shape[0], dtype=torch.float64)
    for _ in range(t_samples):
        for i in range(0, windows.shape[0], batch_size):
            x0 = windows[i:i + batch_size]
            per_window[i:i + x0.shape[0]] += process.nelbo(model, x0, generator).double().cpu()
    model.train(was_training)
    per_window /= t_samples
    n = per_window.numel()
    mean = per_window.mean().item()
    se = (per_window.std(unbiased=True).item() / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "nats_per_token": mean,
        "stderr": se,
        "nats_per_char": mean / chars_per_token,
        "bits_per_char": mean / chars_per_token / math.log(2),
        "windows": n,
        "seq_len": int(windows.shape[1]),
        "t_samples": t_samples,
        "exact": process.exact_likelihood,
    }
