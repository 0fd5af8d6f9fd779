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

Spans against held-out text (``evaluate_spans``): continue (or infill) spans of evenly spaced
validation windows, at token level, and score the generated spans against the real ones with BLEU
and position-wise character match (``thunderdlm eval --bleu N``).
"""
from __future__ import annotations

import math
import time

import numpy as np
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


# ---- continued / infilled spans against held-out text -------------------------------------------------

SPAN_MODES = ("continue", "infill")
N_EXAMPLES = 3          # examples kept in the result
EXAMPLE_CHARS = 60      # characters of known text shown on each side of an example's span


def span_windows(tokens, width: int, n: int) -> tuple[list[int], torch.Tensor]:
    """``n`` windows of ``width`` tokens, evenly spaced over ``tokens``: (starts, LongTensor (n, width)).

    The split is cut into ``count = len // width`` consecutive non-overlapping windows; window k starts
    at token ``k * width``. The ``n`` taken are ``k = round(linspace(0, count − 1, n))`` (the same
    choice as ``eval_windows``), so they always include the first and the last, and never overlap.
    """
    from thunderdlm.errors import SamplingError

    count = len(tokens) // width
    if n > count:
        raise SamplingError(f"the validation split has {len(tokens):,} tokens: only {count} windows of "
                            f"context + span = {width} tokens, fewer than the {n} asked for; ask for "
                            f"at most {count} (--bleu) or shorten --bleu-context / --bleu-span")
    picked = np.round(np.linspace(0, count - 1, n)).astype(np.int64) if n > 1 else np.zeros(1, np.int64)
    starts = [int(k) * width for k in picked]
    rows = np.stack([np.asarray(tokens[s:s + width]) for s in starts])     # (n, width)
    return starts, torch.from_numpy(rows.astype(np.int64))


def uses_right_context(process: Process) -> bool:
    """Whether ``process`` conditions generated tokens on known text to their right.

    A process may say so with a ``uses_right_context`` attribute; otherwise an exact-likelihood
    process is taken to be left-to-right (autoregressive: p(x) = Π p(x_i | x_<i)), which cannot.
    """
    explicit = getattr(process, "uses_right_context", None)
    return bool(explicit) if explicit is not None else not process.exact_likelihood


def exact_match_chars(hypotheses: list[str], references: list[str]) -> float:
    """Σ_i #{j : hyp_i[j] == ref_i[j]} / Σ_i max(len hyp_i, len ref_i): position-wise character match.

    Characters past the end of the shorter text count as mismatches, so a generated span that is
    too short or too long cannot score 1; 1.0 means every span is identical to its reference.
    """
    total = sum(max(len(h), len(r)) for h, r in zip(hypotheses, references))
    same = sum(sum(a == b for a, b in zip(h, r)) for h, r in zip(hypotheses, references))
    return same / total if total else float("nan")


def evaluate_spans(lm, n: int, *, mode: str = "continue", context: int = 128, span: int = 64,
                   steps: int = 64, seed: int = 0, data_dir: str | None = None, batch_size: int = 64,
                   **sample_kwargs) -> dict:
    """BLEU of spans generated by ``lm`` against the held-out text they replace.

    Takes ``n`` validation windows of ``context + span`` tokens, evenly spaced over the split
    (:func:`span_windows`), and per window generates ``span`` tokens with the rest known, in tokens
    (no re-tokenisation of text, so the known tokens are exactly the data's):

    - ``continue``: tokens ``[0, context)`` are the prompt, ``[context, context + span)`` the
      reference;
    - ``infill``: ``left = context // 2`` known tokens, the ``span`` to generate, then
      ``context − left`` known tokens; a process that conditions on both sides (masked diffusion)
      sees all of them. An autoregressive process cannot use text to the right of a gap, so for it
      infill *is* a continuation of the left text (the right text is not even laid out); the result
      says so with ``"uses_right_context": False``.

    Batches of ``batch_size`` windows, batch b with seed ``seed + b``; ``sample_kwargs``
    (temperature, top_k, top_p, remasking, block_length) as for ``lm.sample``. Generated and
    reference spans are decoded alone and compared with :func:`~thunderdlm.sample_metrics.bleu`
    (corpus BLEU, 13a) and :func:`exact_match_chars`. Returns a JSON-ready dict with the setup,
    ``nfe`` (network evaluations per batch, max), ``bleu``, ``exact_match_chars``, ``offsets``
    (token index in the validation split where each window starts), a few ``examples`` with their
    context, and every ``generated`` span with its ``references`` text.
    """
    from thunderdlm.data import TokenData
    from thunderdlm.errors import SamplingError, ThunderError
    from thunderdlm.runfolder import RunFolder
    from thunderdlm.sample_metrics import bleu

    if mode not in SPAN_MODES:
        raise SamplingError(f"--bleu-mode must be one of {list(SPAN_MODES)}, got {mode!r}")
    if n < 1 or batch_size < 1 or context < 1 or span < 1:
        raise SamplingError(f"need --bleu N ≥ 1, --bleu-context ≥ 1, --bleu-span ≥ 1 and a batch size ≥ 1, "
                            f"got {n}, {context}, {span} and {batch_size}")
    if context + span > lm.context:
        raise ThunderError(f"--bleu-context {context} + --bleu-span {span} = {context + span} tokens is longer "
                           f"than the model's context ({lm.context} tokens); shorten them")
    options = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "remasking": "ancestral", "block_length": None}
    if set(sample_kwargs) - set(options):
        raise SamplingError(f"evaluate_spans got unknown sampling options: {sorted(set(sample_kwargs) - set(options))}")
    options.update(sample_kwargs)

    data = TokenData(data_dir or lm.cfg.data.dir)
    RunFolder(lm.run_dir).check_tokenizer(data)
    starts, windows = span_windows(data.split("val"), context + span, n)        # (n, context + span)
    two_sided = uses_right_context(lm.process)
    lo = context if mode == "continue" else context // 2                         # span = [lo, lo + span)
    hi = lo + span
    width = hi if mode == "continue" or not two_sided else context + span        # laid-out positions
    editable = torch.zeros(width, dtype=torch.bool)
    editable[lo:hi] = True
    x_all = windows[:, :width].clone()
    x_all[:, lo:hi] = 0                                   # placeholder: the loop replaces it with the prior

    generated, nfes = [], []
    for b, first in enumerate(range(0, n, batch_size)):
        x_init = x_all[first:first + batch_size]
        res = lm.sample_tokens(x_init, editable.expand_as(x_init), steps=steps, seed=seed + b, **options)
        out = res.tokens.cpu()
        if not torch.equal(out[:, ~editable], x_all[first:first + batch_size][:, ~editable]):
            raise SamplingError(f"process '{lm.cfg.process.name}' changed known tokens while sampling spans")
        generated.append(out[:, lo:hi])
        nfes.append(res.nfe)
    generated = torch.cat(generated)                                              # (n, span)

    decode = lm.tokenizer.decode
    hyps = [decode(row.tolist()) for row in generated]
    refs = [decode(row.tolist()) for row in windows[:, lo:hi]]
    examples = []
    for i in range(min(N_EXAMPLES, n)):
        ex = {"offset": starts[i], "prompt_tail": decode(windows[i, :lo].tolist())[-EXAMPLE_CHARS:],
              "reference": refs[i], "generated": hyps[i]}
        if mode == "infill":
            ex["right_head"] = decode(windows[i, hi:].tolist())[:EXAMPLE_CHARS]
        examples.append(ex)
    return {
        "mode": mode, "n": n, "context": context, "span": span, "steps": steps, "seed": seed,
        "options": options,
        "uses_right_context": mode == "infill" and two_sided,
        "span_start": lo, "nfe": max(nfes), "bleu": bleu(hyps, refs),
        "exact_match_chars": exact_match_chars(hyps, refs), "offsets": starts, "examples": examples,
        "generated": hyps, "references": refs,
    }
