"""Likelihood evaluation: the validation NLL bound with its standard error.

Each window gets ``t_samples`` independent Monte Carlo draws of the process's NELBO (nats per
token); its mean over draws is one observation, and the reported standard error is the spread of
those per-window means over windows / sqrt(#windows) — it covers both the data and the t/mask noise.
Bits per character convert through the validation split's tokens-per-character ratio, so that
tokenizers with different granularity compare.

Sample quality (``evaluate_samples``): draw N unconditional samples, time them (sampling tokens/s
and the number of network evaluations, NFE), and measure them without a model
(``thunderdlm.sample_metrics``) and under judge models (``thunderdlm.judges``). The CLI
(``thunderdlm eval --samples N``) and the benchmark both call it.
"""
from __future__ import annotations

import math
import time

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


def evaluate_samples(lm, n: int, steps: int, length: int | None = None, judge=None, seed: int = 0, *,
                     batch_size: int = 64, judge_batch_size: int = 8, keep_texts: bool = True,
                     **sample_kwargs) -> dict:
    """Draw ``n`` samples from ``lm`` (a ``thunderdlm.load`` result) and measure them.

    ``judge``: None, a :class:`~thunderdlm.judges.Judge`, a judge spec string, or a list of those.
    Samples are drawn ``batch_size`` at a time, batch b with seed ``seed + b``; ``sample_kwargs``
    (temperature, top_k, top_p, remasking, block_length) go to ``lm.sample``. Returns a JSON-ready
    dict: the sampling setup, ``nfe`` (network evaluations per batch), ``sampling_tokens_per_s``
    (generated tokens / wall seconds, decoding included), ``metrics`` (``sample_metrics``),
    ``judges`` ({name: judge NLL per char and per judge token, perplexity, seconds}) and the texts.
    """
    from thunderdlm.errors import SamplingError
    from thunderdlm.sample_metrics import sample_metrics

    if n < 1 or batch_size < 1:
        raise SamplingError(f"need --samples ≥ 1 and a batch size ≥ 1, got {n} and {batch_size}")
    judges = _resolve_judges(judge, lm.device)
    texts, nfes, tokens = [], [], 0
    t0 = time.perf_counter()
    for b, lo in enumerate(range(0, n, batch_size)):
        out, res = lm.sample(length=length, n=min(batch_size, n - lo), steps=steps, seed=seed + b, **sample_kwargs)
        texts += out
        nfes.append(res.nfe)
        tokens += res.tokens.numel()
    seconds = time.perf_counter() - t0
    result = {
        "n": n, "steps": steps, "length": tokens // n, "seed": seed, "batch_size": batch_size,
        "options": sample_kwargs, "nfe": max(nfes), "sampling_seconds": seconds,
        "sampling_tokens_per_s": tokens / seconds, "metrics": sample_metrics(texts), "judges": {},
    }
    for j in judges:
        t1 = time.perf_counter()
        score = j.score(texts, batch_size=judge_batch_size)
        result["judges"][j.name] = {**score.to_dict(), "seconds": time.perf_counter() - t1}
    if keep_texts:
        result["texts"] = texts
    return result


def _resolve_judges(judge, device) -> list:
    """None | Judge | spec | a sequence of those → a list of Judge objects."""
    from thunderdlm.judges import Judge, load_judge

    if judge is None:
        return []
    items = [judge] if isinstance(judge, (str, Judge)) else list(judge)
    return [j if isinstance(j, Judge) else load_judge(str(j), device=str(device)) for j in items]
