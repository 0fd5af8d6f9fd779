"""Speed–quality frontier: every method continues the same held-out prompts, at batch 1 and batch 16.

For each run folder and decoding setting, ``--n`` validation prompts of ``--prompt-chars`` characters
(evenly spaced over the split, the same for every run) are continued by ``--new-chars`` characters:
once one prompt at a time (batch 1) and once all prompts together (batch ``--batch``). Per setting:

- **sampling tokens/s** (generated tokens of all rows / wall seconds of the generation calls only),
  NFE and tokens per network call per sequence (1 for AR; up to the block size for block diffusion);
- **judge NLL per character given the prompt** (SmolLM2-135M by default: nats of prompt +
  continuation minus nats of the prompt, per continuation character), the **real-word share**
  (words of the continuation found in the run's training split) and **distinct-2/3** of the words;
- the real continuation scored the same way, as the reference row.

Settings: AR runs decode one token per call with their KV cache; block-diffusion runs with
Fast-dLLM's confidence threshold τ (``--thresholds``) and with one token per call (low-confidence,
``steps`` = tokens); masked runs with τ inside ``--masked-block`` blocks. Every setting uses the same
temperature. Output: JSON, a markdown table and a frontier plot (judge NLL vs tokens/s).

    python bench/speed_quality.py runs/ar runs/block4 runs/block16 --out docs/results/speed_quality
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import thunderdlm
from thunderdlm.bench.measure import conditional_nll, training_vocabulary
from thunderdlm.data import TokenData
from thunderdlm.runtime import setup_runtime
from thunderdlm.sample_metrics import real_word_fraction, sample_metrics


def prompts(lm, n: int, prompt_chars: int, new_chars: int) -> tuple[list[str], list[str]]:
    """n (prompt, real continuation) pairs from evenly spaced validation offsets, as text."""
    data = TokenData(lm.cfg.data.dir)
    text = lm.tokenizer.decode(data.split("val")[: 400_000].tolist())
    span = prompt_chars + new_chars
    starts = [round(i * (len(text) - span) / max(n, 1)) for i in range(n)]
    return [text[s:s + prompt_chars] for s in starts], [text[s + prompt_chars:s + span] for s in starts]


def settings(lm, thresholds: list[float], masked_block: int) -> list[dict]:
    """Decoding settings for this run's process (see the module docstring)."""
    name = lm.process.name
    if name == "autoregressive":
        return [{"label": "AR, KV cache"}]
    if name == "block":
        rows = [{"label": f"τ={tau}", "threshold": tau, "remasking": "low_confidence"}
                for tau in thresholds]
        return rows + [{"label": "1 token/call", "remasking": "low_confidence", "per_token": True}]
    if name == "masked":
        return [{"label": f"τ={tau}, blocks of {masked_block}", "threshold": tau,
                 "remasking": "low_confidence", "block_length": masked_block} for tau in thresholds]
    return [{"label": "1 token/call", "per_token": True}]


def generate(lm, texts: list[str], new_tokens: int, setting: dict, batch: int, temperature: float,
             seed: int) -> tuple[list[str], float, int, int]:
    """Continuations of ``texts`` in batches of ``batch``: (texts, seconds, nfe, generated)."""
    out, seconds, nfe, generated = [], 0.0, 0, 0
    kw = {k: v for k, v in setting.items() if k in ("threshold", "remasking", "block_length")}
    # one token per call where asked (and for AR); a threshold decides its own number of steps
    for i in range(0, len(texts), batch):
        group = texts[i:i + batch]
        ids = [lm.tokenizer.encode(t) for t in group]
        width = min(len(x) for x in ids)                 # equal prompt lengths in a batch
        x = torch.tensor([x[len(x) - width:] + [0] * new_tokens for x in ids])
        editable = torch.zeros_like(x, dtype=torch.bool)
        editable[:, width:] = True
        t0 = time.perf_counter()
        res = lm.sample_tokens(x, editable, steps=new_tokens, seed=seed + i,
                               temperature=temperature, **kw)
        seconds += time.perf_counter() - t0
        nfe, generated = nfe + res.nfe, generated + res.generated
        out += [lm.tokenizer.decode(row[width:].tolist()) for row in res.tokens.cpu()]
    return out, seconds, nfe, generated


def quality(texts: list[str], prompts_: list[str], judge, vocabulary: set[str]) -> dict:
    m = sample_metrics(texts)
    q = {"real_word_fraction": real_word_fraction(texts, vocabulary)[0],
         "distinct_2": m["distinct_2"], "distinct_3": m["distinct_3"]}
    if judge is not None:
        q["judge_nll_per_char"] = conditional_nll(judge, prompts_, texts)["nats_per_char"]
    return q


def measure(run: str, args, judge) -> list[dict]:
    lm = thunderdlm.load(run)
    data = TokenData(lm.cfg.data.dir)
    cpt = data.chars_per_token("val")
    new_tokens = max(1, round(args.new_chars / cpt))
    ps, refs = prompts(lm, args.n, args.prompt_chars, args.new_chars)
    vocabulary = training_vocabulary(lm, data)
    rows = [{"run": run, "process": lm.process.name, "label": "real continuation",
             **quality(refs, ps, judge, vocabulary)}] if args.reference else []
    for s in settings(lm, args.thresholds, args.masked_block):
        for batch in (1, args.batch):
            texts, secs, nfe, gen = generate(lm, ps, new_tokens, s, batch, args.temperature, args.seed)
            calls_per_row = nfe / math.ceil(len(ps) / batch)
            row = {"run": run, "process": lm.process.name, "label": s["label"], "batch": batch,
                   "new_tokens": new_tokens, "seconds": secs, "tokens_per_s": gen / secs,
                   "nfe": nfe, "tokens_per_call": new_tokens / calls_per_row,
                   **quality(texts, ps, judge, vocabulary), "example": ps[0] + "‖" + texts[0]}
            rows.append(row)
            print(f"{Path(run).name:>14} {s['label']:>22} batch {batch:>2}: {row['tokens_per_s']:8.0f} tok/s, "
                  f"{row['tokens_per_call']:.2f} tok/call, judge {row.get('judge_nll_per_char', float('nan')):.3f}, "
                  f"real words {row['real_word_fraction']:.3f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    ar = {r["batch"]: r["tokens_per_s"] for r in rows if r["process"] == "autoregressive" and "batch" in r}
    lines = ["| run | setting | batch | tok/s | × AR | tokens/call | judge NLL/char | real words | distinct-2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "batch" not in r:
            lines.append(f"| {Path(r['run']).name} | {r['label']} | – | – | – | – | "
                         f"{r.get('judge_nll_per_char', float('nan')):.3f} | {r['real_word_fraction']:.1%} | "
                         f"{r['distinct_2']:.2f} |")
            continue
        rel = r["tokens_per_s"] / ar[r["batch"]] if r["batch"] in ar else float("nan")
        lines.append(f"| {Path(r['run']).name} | {r['label']} | {r['batch']} | {r['tokens_per_s']:,.0f} | "
                     f"{rel:.2f} | {r['tokens_per_call']:.2f} | {r.get('judge_nll_per_char', float('nan')):.3f} | "
                     f"{r['real_word_fraction']:.1%} | {r['distinct_2']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows if "batch" in r})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for r in (r for r in rows if r.get("batch") == batch and "judge_nll_per_char" in r):
            marker = "s" if r["process"] == "autoregressive" else "o"
            ax.scatter(r["tokens_per_s"], r["judge_nll_per_char"], marker=marker)
            ax.annotate(f"{Path(r['run']).name} {r['label']}", (r["tokens_per_s"], r["judge_nll_per_char"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        ref = [r["judge_nll_per_char"] for r in rows if "batch" not in r and "judge_nll_per_char" in r]
        if ref:
            ax.axhline(ref[0], ls="--", lw=0.8, color="grey", label="real continuation")
            ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("sampling tokens/s (log)")
        ax.set_ylabel("judge NLL per character given the prompt (lower is better)")
        ax.set_title(f"batch {batch}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (AR, block, masked, ...)")
    ap.add_argument("--n", type=int, default=16, help="held-out prompts")
    ap.add_argument("--prompt-chars", type=int, default=128)
    ap.add_argument("--new-chars", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--masked-block", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--judge", default="smollm2", help="'smollm2', an AR run folder, or 'none'")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: side by side, fair)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/speed_quality")
    args = ap.parse_args()
    setup_runtime(args.threads)
    judge = None
    if args.judge != "none":
        from thunderdlm.judges import load_judge
        judge = load_judge(args.judge)
    rows = []
    for i, run in enumerate(args.runs):
        args.reference = i == 0
        rows += measure(run, args, judge)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "threads": torch.get_num_threads(), "torch": torch.__version__, **{
                k: getattr(args, k) for k in ("n", "prompt_chars", "new_chars", "batch", "thresholds",
                                              "temperature", "judge", "seed")}}
    (out / "speed_quality.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "speed_quality.md").write_text(f"`{meta['command']}`\n\n" + table(rows))
    plot(rows, out / "frontier.png")
    print(table(rows))


if __name__ == "__main__":
    main()
