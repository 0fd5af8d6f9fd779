"""The speed–quality frontier: every method continues the same held-out prompts, at batch 1 and B.

For each run folder and decoding setting, ``n`` validation prompts of ``prompt_chars`` characters
(evenly spaced over the split; the same text for every run) are continued by ``new_chars``
characters (converted to each run's tokens), once one prompt at a time (batch 1) and once in
batches of ``batch``. Per setting:

- **sampling tokens/s**: generated tokens of all rows / wall seconds of the generation calls only;
  NFE, and tokens per network call per sequence (1 for AR; up to the block size for block diffusion);
- **judge NLL per character given the prompt** (nats of prompt + continuation minus nats of the
  prompt, per continuation character), the **real-word share** (words of the continuation found in
  the run's training split) and **distinct-2** of the words;
- the real continuation scored the same way (the reference row).

Decoding settings follow the process: AR one token per call with its KV cache; block diffusion
with Fast-dLLM's confidence threshold τ for each of ``thresholds`` and with one token per call
(low-confidence, steps = tokens); plain masked diffusion with τ inside ``masked_block``-token
blocks (Fast-dLLM on a bidirectional model), and once more at the strictest τ with Fast-dLLM's
approximate prefix and dual caches (``process.prefix_cache``, ``process.dual_cache``); anything
else one token per call. Every setting samples at the same temperature.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from thunderdlm.bench.measure import conditional_nll, training_vocabulary
from thunderdlm.bench.suite import FrontierSettings


def prompts(lm, n: int, prompt_chars: int, new_chars: int) -> tuple[list[str], list[str]]:
    """n (prompt, real continuation) pairs from evenly spaced validation offsets, as text."""
    from thunderdlm.data import TokenData

    data = TokenData(lm.cfg.data.dir)
    text = lm.tokenizer.decode(data.split("val")[:400_000].tolist())
    span = prompt_chars + new_chars
    starts = [round(i * (len(text) - span) / max(n, 1)) for i in range(n)]
    return [text[s:s + prompt_chars] for s in starts], [text[s + prompt_chars:s + span] for s in starts]


def settings(process_name: str, s: FrontierSettings) -> list[dict]:
    """Decoding settings for a process (see the module docstring)."""
    if process_name == "autoregressive":
        return [{"label": "AR, KV cache"}]
    if process_name == "block":
        return ([{"label": f"τ={tau}", "threshold": tau, "remasking": "low_confidence"}
                 for tau in s.thresholds]
                + [{"label": "1 token/call", "remasking": "low_confidence"}])
    if process_name == "masked":
        taus = s.masked_thresholds or s.thresholds
        rows = [{"label": f"τ={tau}, blocks of {s.masked_block}", "threshold": tau,
                 "remasking": "low_confidence", "block_length": s.masked_block} for tau in taus]
        tau = max(taus)              # Fast-dLLM's approximate prefix cache at the strictest τ
        return rows + [{"label": f"τ={tau}, blocks of {s.masked_block}, {name} cache",
                        "threshold": tau, "remasking": "low_confidence",
                        "block_length": s.masked_block, "overrides": [f"process.{name}_cache=true"]}
                       for name in ("prefix", "dual")]
    return [{"label": "1 token/call"}]


def generate(lm, texts: list[str], new_tokens: int, setting: dict, batch: int, temperature: float,
             seed: int, repeats: int = 1) -> tuple[list[str], float, int, int]:
    """Continuations of ``texts`` in batches of ``batch``: (texts, seconds, nfe, generated).

    Each batch is generated ``repeats`` times with the same seed (the same tokens) and its fastest
    time is kept: on a shared machine the minimum is the least disturbed measurement."""
    out, seconds, nfe, generated = [], 0.0, 0, 0
    kw = {k: v for k, v in setting.items() if k in ("threshold", "remasking", "block_length")}
    for i in range(0, len(texts), batch):
        ids = [lm.tokenizer.encode(t) for t in texts[i:i + batch]]
        width = min(len(x) for x in ids)                  # equal prompt lengths within a batch
        if width + new_tokens > lm.context:
            raise ValueError(f"{width} prompt + {new_tokens} new tokens exceed the context of "
                             f"{lm.run_dir} ({lm.context}); use shorter --prompt-chars / --new-chars")
        x = torch.tensor([x[len(x) - width:] + [0] * new_tokens for x in ids])
        editable = torch.zeros_like(x, dtype=torch.bool)
        editable[:, width:] = True
        best = float("inf")
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            # steps = tokens: one token per call where no threshold decides the number of steps
            res = lm.sample_tokens(x, editable, steps=new_tokens, seed=seed + i,
                                   temperature=temperature, **kw)
            best = min(best, time.perf_counter() - t0)
        seconds += best
        nfe, generated = nfe + res.nfe, generated + res.generated
        out += [lm.tokenizer.decode(row[width:].tolist()) for row in res.tokens.cpu()]
    return out, seconds, nfe, generated


def quality(texts: list[str], prompts_: list[str], judge, vocabulary: set[str]) -> dict:
    from thunderdlm.sample_metrics import real_word_fraction, sample_metrics

    q = {"real_word_fraction": real_word_fraction(texts, vocabulary)[0],
         "distinct_2": sample_metrics(texts)["distinct_2"]}
    if judge is not None:
        q["judge_nll_per_char"] = conditional_nll(judge, prompts_, texts)["nats_per_char"]
    return q


def measure_frontier(run: Path, s: FrontierSettings, judge, *, seed: int = 0, reference: bool = False,
                     device: str = "auto", log=print) -> list[dict]:
    """The frontier rows of one run folder (and the real continuation's row when ``reference``)."""
    import thunderdlm
    from thunderdlm.data import TokenData

    lm = thunderdlm.load(run, device=device)
    data = TokenData(lm.cfg.data.dir)
    new_tokens = max(1, round(s.new_chars / data.chars_per_token("val")))
    ps, refs = prompts(lm, s.n, s.prompt_chars, s.new_chars)
    vocabulary = training_vocabulary(lm, data)
    name = Path(run).name
    rows = [{"run": name, "process": lm.process.name, "label": "real continuation",
             **quality(refs, ps, judge, vocabulary)}] if reference else []
    for setting in settings(lm.process.name, s):
        model = thunderdlm.load(run, device=device, overrides=setting["overrides"]) \
            if setting.get("overrides") else lm
        for batch in dict.fromkeys((1, s.batch)):
            texts, secs, nfe, gen = generate(model, ps, new_tokens, setting, batch, s.temperature,
                                             seed, s.repeats)
            calls_per_row = nfe / math.ceil(len(ps) / batch)
            row = {"run": name, "process": lm.process.name, "label": setting["label"], "batch": batch,
                   "new_tokens": new_tokens, "seconds": secs, "tokens_per_s": gen / secs, "nfe": nfe,
                   "tokens_per_call": new_tokens / calls_per_row,
                   **quality(texts, ps, judge, vocabulary), "example": [ps[0], texts[0]]}
            rows.append(row)
            log(f"  {name} {setting['label']} batch {batch}: {row['tokens_per_s']:,.0f} tok/s, "
                f"{row['tokens_per_call']:.2f} tok/call, judge "
                f"{row.get('judge_nll_per_char', float('nan')):.3f} nats/char, real words "
                f"{row['real_word_fraction']:.1%}")
    return rows


def measure_hf_ar(folder: Path, like: Path, s: FrontierSettings, judge, *, seed: int = 0,
                  log=print) -> list[dict]:
    """A pretrained causal LM's own sampling (transformers ``generate`` with its KV cache) on the
    prompts of run ``like`` (which uses the same tokenizer): the AR reference of an adapted model."""
    import thunderdlm
    from thunderdlm.data import TokenData
    from thunderdlm.models.hf_io import load_causal_lm
    from transformers import AutoTokenizer

    lm = thunderdlm.load(like)
    data = TokenData(lm.cfg.data.dir)
    new_tokens = max(1, round(s.new_chars / data.chars_per_token("val")))
    ps, _ = prompts(lm, s.n, s.prompt_chars, s.new_chars)
    vocabulary = training_vocabulary(lm, data)
    model = load_causal_lm(folder).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    rows = []
    for batch in dict.fromkeys((1, s.batch)):
        texts, seconds, generated = [], 0.0, 0
        for i in range(0, len(ps), batch):
            ids = [tok.encode(p) for p in ps[i:i + batch]]
            width = min(len(x) for x in ids)
            x = torch.tensor([r[len(r) - width:] for r in ids])
            best = float("inf")
            for _ in range(max(s.repeats, 1)):
                torch.manual_seed(seed + i)
                t0 = time.perf_counter()
                with torch.no_grad():
                    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                                         min_new_tokens=new_tokens, do_sample=s.temperature > 0,
                                         temperature=s.temperature or None, top_k=0, top_p=1.0,
                                         pad_token_id=tok.eos_token_id)
                best = min(best, time.perf_counter() - t0)
            seconds += best
            generated += (out.shape[1] - width) * out.shape[0]
            texts += [tok.decode(r[width:].tolist()) for r in out]
        row = {"run": Path(folder).name, "process": "autoregressive", "label": "pretrained AR (generate)",
               "batch": batch, "new_tokens": new_tokens, "seconds": seconds,
               "tokens_per_s": generated / seconds, "nfe": new_tokens * math.ceil(len(ps) / batch),
               "tokens_per_call": 1.0, **quality(texts, ps, judge, vocabulary), "example": [ps[0], texts[0]]}
        rows.append(row)
        log(f"  {row['run']} AR batch {batch}: {row['tokens_per_s']:,.0f} tok/s, judge "
            f"{row.get('judge_nll_per_char', float('nan')):.3f} nats/char, real words {row['real_word_fraction']:.1%}")
    return rows


def frontier_table(rows: list[dict]) -> str:
    """Markdown: one row per (run, setting, batch); × AR is the ratio to the AR row's tokens/s."""
    ar = {r["batch"]: r["tokens_per_s"] for r in rows if r["process"] == "autoregressive" and "batch" in r}
    lines = ["| run | setting | batch | tok/s | × AR | tokens/call | judge NLL/char | real words | distinct-2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        judge = f"{r['judge_nll_per_char']:.3f}" if "judge_nll_per_char" in r else "–"
        if "batch" not in r:
            lines.append(f"| {r['run']} | {r['label']} | – | – | – | – | {judge} | "
                         f"{r['real_word_fraction']:.1%} | {r['distinct_2']:.2f} |")
            continue
        rel = f"{r['tokens_per_s'] / ar[r['batch']]:.2f}" if r["batch"] in ar else "–"
        lines.append(f"| {r['run']} | {r['label']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {rel} | "
                     f"{r['tokens_per_call']:.2f} | {judge} | {r['real_word_fraction']:.1%} | "
                     f"{r['distinct_2']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_frontier(rows: list[dict], path: Path) -> None:
    """Judge NLL given the prompt vs sampling tokens/s, one panel per batch size: one colour and
    line per run (its settings sorted by speed), each point labelled by its setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows if "batch" in r})
    runs = list(dict.fromkeys(r["run"] for r in rows if "batch" in r))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 4.8), squeeze=False)
    ref = [r["judge_nll_per_char"] for r in rows if "batch" not in r and "judge_nll_per_char" in r]
    for ax, batch in zip(axes[0], batches):
        for i, run in enumerate(runs):
            pts = sorted((r for r in rows if r.get("batch") == batch and r["run"] == run
                          and "judge_nll_per_char" in r), key=lambda r: r["tokens_per_s"])
            if not pts:
                continue
            xs, ys = [r["tokens_per_s"] for r in pts], [r["judge_nll_per_char"] for r in pts]
            ar = pts[0]["process"] == "autoregressive"
            ax.plot(xs, ys, marker="s" if ar else "o", color=colours(i % 10), label=run, lw=0.8)
            for r in pts:
                short = r["label"].split(",")[0].replace("1 token/call", "1/call").replace("AR", "")
                ax.annotate(short.strip(), (r["tokens_per_s"], r["judge_nll_per_char"]), fontsize=6,
                            xytext=(2, 2), textcoords="offset points", color=colours(i % 10))
        if ref:
            ax.axhline(ref[0], ls="--", lw=0.8, color="grey", label="real continuation")
        ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("sampling tokens/s (log scale)")
        ax.set_ylabel("judge NLL per char given the prompt (lower is better)")
        ax.set_title(f"batch {batch}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_frontier(run_dirs: list[Path], s: FrontierSettings, judge, out: Path, *, seed: int,
                 device: str = "auto", log: Callable[[str], None] = print,
                 meta: dict[str, Any] | None = None) -> list[dict]:
    """Every run's rows (the first run also scores the real continuation); written to ``out``."""
    rows: list[dict] = []
    for i, run in enumerate(run_dirs):
        rows += measure_frontier(Path(run), s, judge, seed=seed, reference=i == 0, device=device, log=log)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "seed": seed, **vars(s), **(meta or {})}
    write_frontier(rows, out, meta)
    return rows


def write_frontier(rows: list[dict], out: Path, meta: dict) -> None:
    """frontier.json, frontier.md and frontier.png in ``out``."""
    import json

    from thunderdlm.checkpoint import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "frontier.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    atomic_write_text(out / "frontier.md", f"`{meta.get('command', '')}`\n\n" + frontier_table(rows))
    plot_frontier(rows, out / "frontier.png")
