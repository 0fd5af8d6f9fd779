"""Measure one trained run the way the benchmark compares methods (DESIGN.md §4).

- training: steps, tokens, training seconds and tokens/s, from the checkpoint's ``state.json``;
- likelihood: the validation NLL bound (exact for AR) in nats/char ± its standard error;
- samples, at every step count of the suite: sample metrics (entropies, distinct-n, repetition),
  the judges' NLL per character and per judge token, sampling tokens/s and the NFE actually made;
- prompted continuations (when the suite asks for them): the same held-out windows continued by
  every method — BLEU and exact characters against the real continuation, the share of real
  (training-text) words, each judge's NLL of the continuation *given the prompt* (nats of prompt +
  continuation minus nats of the prompt, per character of continuation), sampling tokens/s, NFE;
- the validation curve logged during training (bound vs training wall time), for the plots;
- once per suite run and data folder, the reference row: the real held-out text cut into windows
  of the samples' length and scored by the same judges (``measure_real_text``), so a sample's
  judge NLL is always read beside the judge's NLL of real text from the same run.

Per-character figures divide by the validation split's characters per token, so char- and
BPE-tokenised methods compare.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

from thunderdlm import checkpoint as ck
from thunderdlm.bench.suite import Suite
from thunderdlm.runfolder import RunFolder

EXAMPLES_KEPT = 2   # sample texts stored per step count (the rest are only measured)


def measure_run(run_dir: Path, suite: Suite, judges: dict[str, Any],
                log: Callable[[str], None] = print) -> dict:
    """Every measurement of one run folder, as a JSON-ready dict."""
    import thunderdlm

    lm = thunderdlm.load(run_dir, device=suite.device)
    record = {"checkpoint": lm.checkpoint.name, "training": training_record(lm.checkpoint)}
    t0 = time.perf_counter()
    like = lm.evaluate(windows=suite.eval.windows, t_samples=suite.eval.t_samples,
                       batch_size=suite.eval.batch_size, seed=suite.seed)
    record["likelihood"] = likelihood_record(like, time.perf_counter() - t0)
    kind = "exact" if like["exact"] else "bound"
    log(f"  validation {kind}: {like['nats_per_char']:.4f} ± {record['likelihood']['stderr_per_char']:.4f} "
        f"nats/char ({like['windows']} windows × {like['t_samples']} t-samples)")
    record["samples"] = []
    for steps in suite.sampling.nfe:
        row = measure_samples(lm, steps, suite, judges)
        record["samples"].append(row)
        judged = ", ".join(f"{name} {j['nats_per_char']:.3f} nats/char" for name, j in row["judges"].items())
        log(f"  {steps} steps: nfe {row['nfe']}, {row['sampling_tokens_per_s']:,.0f} tok/s, unigram entropy "
            f"{row['metrics']['unigram_entropy']:.3f}" + (f", judge {judged}" if judged else ""))
    if suite.continuations.n:
        record["continuations"] = measure_continuations(lm, suite, judges)
        c = record["continuations"]
        log(f"  continuations: BLEU {c['bleu']:.2f}, real words {c['real_word_fraction']:.3f}, "
            f"{c['sampling_tokens_per_s']:,.0f} tok/s, nfe {c['nfe']}")
    record["curve"] = validation_curve(run_dir)
    return record


def training_record(ckpt: Path) -> dict:
    state = ck.read_state(ckpt)
    secs = float(state["train_seconds"])
    return {"steps": int(state["step"]), "tokens": int(state["tokens"]), "train_seconds": secs,
            "tok_s": state["tokens"] / secs if secs > 0 else float("nan")}


def likelihood_record(res: dict, seconds: float) -> dict:
    """lm.evaluate's result with the standard error also per character."""
    per_char = res["nats_per_char"] / res["nats_per_token"] if res["nats_per_token"] else 1.0
    return {"nats_per_char": res["nats_per_char"], "stderr_per_char": res["stderr"] * per_char,
            "nats_per_token": res["nats_per_token"], "stderr_per_token": res["stderr"],
            "bits_per_char": res["bits_per_char"], "exact": bool(res["exact"]),
            "windows": res["windows"], "seq_len": res["seq_len"], "t_samples": res["t_samples"],
            "seconds": seconds}


def measure_samples(lm, steps: int, suite: Suite, judges: dict[str, Any]) -> dict:
    """Unconditional samples at ``steps`` reverse steps: metrics, judge NLLs, NFE and speed
    (``thunderdlm.evaluate.evaluate_samples``; only a few sample texts are kept)."""
    from thunderdlm.evaluate import evaluate_samples

    s = suite.sampling
    res = evaluate_samples(lm, s.n_samples, steps, s.length, list(judges.values()) or None,
                           seed=suite.seed, batch_size=s.batch_size)
    texts = res.pop("texts", [])
    return {**res, "examples": texts[:EXAMPLES_KEPT]}


def measure_continuations(lm, suite: Suite, judges: dict[str, Any]) -> dict:
    """Prompted continuations of ``continuations.n`` held-out windows (``evaluate_spans``, mode
    continue), scored against the real text, the training vocabulary and the judges."""
    from thunderdlm.data import TokenData
    from thunderdlm.evaluate import evaluate_spans
    from thunderdlm.sample_metrics import real_word_fraction

    c = suite.continuations
    t0 = time.perf_counter()
    res = evaluate_spans(lm, c.n, mode="continue", context=c.context, span=c.span, steps=c.steps,
                         seed=suite.seed, batch_size=c.batch_size)
    seconds = time.perf_counter() - t0
    data = TokenData(lm.cfg.data.dir)
    vocabulary = training_vocabulary(lm, data)
    frac, n_words = real_word_fraction(res["generated"], vocabulary)
    prompts = [lm.tokenizer.decode(data.split("val")[o:o + c.context].tolist()) for o in res["offsets"]]
    record = {"n": c.n, "context": c.context, "span": c.span, "steps": c.steps, "nfe": res["nfe"],
              "seconds": seconds, "sampling_tokens_per_s": c.n * c.span / seconds,
              "bleu": res["bleu"]["score"], "exact_match_chars": res["exact_match_chars"],
              "real_word_fraction": frac, "words": n_words,
              "real_word_fraction_of_reference": real_word_fraction(res["references"], vocabulary)[0],
              "judges": {name: conditional_nll(judge, prompts, res["generated"])
                         for name, judge in judges.items()},
              "reference_judges": {name: conditional_nll(judge, prompts, res["references"])
                                   for name, judge in judges.items()},
              "examples": [{"prompt": p, "reference": r, "generated": g} for p, r, g in
                           zip(prompts, res["references"], res["generated"])][:c.examples]}
    return record


def training_vocabulary(lm, data) -> set[str]:
    """The words of the run's training split (decoded by its tokenizer): what counts as real."""
    from thunderdlm.sample_metrics import words

    return set(words(lm.tokenizer.decode(data.split("train").tolist())))


def conditional_nll(judge, prompts: list[str], continuations: list[str]) -> dict:
    """A judge's NLL of each continuation given its prompt, per character of continuation:
    Σ (nats(prompt + continuation) − nats(prompt)) / Σ len(continuation)."""
    both = judge.score([p + t for p, t in zip(prompts, continuations)])
    alone = judge.score(prompts)
    nats = sum(b["nats"] - a["nats"] for b, a in zip(both.per_text, alone.per_text))
    chars = sum(len(t) for t in continuations)
    return {"nats_per_char": nats / chars if chars else float("nan"), "chars": chars}


def real_text_windows(data_dir: str | Path, n: int, length: int) -> list[str]:
    """n windows of ``length`` tokens of the validation split, evenly spaced over it, decoded to
    text: the real counterpart of n unconditional samples of that length."""
    from thunderdlm.data import TokenData

    data = TokenData(data_dir)
    val = data.split("val")
    if len(val) < length:
        raise ValueError(f"data folder '{data_dir}': the validation split has {len(val)} tokens, "
                         f"fewer than one window of {length}")
    last = len(val) - length
    offsets = [round(i * last / max(n - 1, 1)) for i in range(n)]
    return [data.tokenizer.decode(val[o:o + length].tolist()) for o in offsets]


def measure_real_text(data_dir: str | Path, n: int, length: int, judges: dict[str, Any]) -> dict:
    """The reference row: every judge's NLL of n real held-out windows (``real_text_windows``),
    scored exactly as the samples are (``Judge.score``: nats per character and per judge token)."""
    texts = real_text_windows(data_dir, n, length)
    return {"data": str(data_dir), "windows": n, "length": length,
            "chars": sum(len(t) for t in texts),
            "judges": {name: judge.score(texts).to_dict() for name, judge in judges.items()},
            "examples": texts[:1]}


def validation_curve(run_dir: Path) -> list[dict]:
    """The periodic evaluations the trainer logged: bound (nats/char) vs training seconds."""
    curve = []
    for row in RunFolder(run_dir).metrics():
        if "val_nelbo" not in row or "val_bpc" not in row:
            continue
        nats_char = row["val_bpc"] * math.log(2)
        per_char = nats_char / row["val_nelbo"] if row["val_nelbo"] else 1.0
        curve.append({"step": row["step"], "train_seconds": row["train_seconds"],
                      "nats_per_char": nats_char, "stderr_per_char": row.get("val_se", float("nan")) * per_char})
    return curve
