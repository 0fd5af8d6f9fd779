"""Human-readable views of :class:`BenchResults`: a markdown report and two PNG plots.

- ``results.md``: the summary table (one row per method), the per-step-count sample table, the
  prompted-continuation table with continuations side by side (when the suite measured them), the
  fairness warnings, the manifest in one paragraph, and the plots;
- ``bound_vs_time.png``: validation nats/char vs training wall time per method (the trainer's
  periodic evaluations, and the final full evaluation ± standard error as a marker);
- ``quality_vs_nfe.png``: each judge's NLL/char of the samples (or, with no judge, their unigram
  entropy) vs the number of network evaluations per sample.

Plots draw on a bare ``matplotlib.figure.Figure`` with the Agg canvas, so the process-wide pyplot
backend is left alone.
"""
from __future__ import annotations

import math
from pathlib import Path

from thunderdlm.bench.results import BenchResults
from thunderdlm.checkpoint import atomic_write_text

REPORT_FILE = "results.md"
BOUND_PLOT = "bound_vs_time.png"
QUALITY_PLOT = "quality_vs_nfe.png"


def write_report(results: BenchResults, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"plot_bound": out / BOUND_PLOT, "plot_quality": out / QUALITY_PLOT, "markdown": out / REPORT_FILE}
    plot_bound_vs_time(results, paths["plot_bound"])
    plot_quality_vs_nfe(results, paths["plot_quality"])
    atomic_write_text(paths["markdown"], markdown_report(results))
    return paths


# ---- markdown ------------------------------------------------------------------------------------

def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _num(x, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def judge_names(results: BenchResults) -> list[str]:
    """The judges' names as they appear in the measurements, in order of first appearance."""
    names: dict[str, None] = {}
    for r in results.methods:
        for s in r["samples"]:
            names.update(dict.fromkeys(s["judges"]))
    return list(names)


def largest_nfe_row(record: dict) -> dict:
    return max(record["samples"], key=lambda s: s["steps"])


def summary_table(results: BenchResults) -> str:
    judges = judge_names(results)
    ref = results.reference
    head = ["method", "process", "backbone", "params", "train tok/s", "steps", "val nats/char ± se",
            f"ratio to AR ({ref})" if ref else "ratio to AR"]
    if judges:
        head.append(f"{judges[0]} NLL/char @ max steps")
    head.append("unigram entropy @ max steps")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results.methods:
        like, top = r["likelihood"], largest_nfe_row(r)
        kind = "exact" if like["exact"] else "bound"
        row = [r["name"], r["process"], r["backbone"], _params(r["params"]),
               _num(r["training"]["tok_s"], ",.0f"), f"{r['training']['steps']:,}",
               f"{like['nats_per_char']:.4f} ± {_num(like['stderr_per_char'], '.4f')} ({kind})",
               _num(r.get("ratio_to_ar"), ".3f")]
        if judges:
            j = top["judges"].get(judges[0])
            row.append(f"{_num(j['nats_per_char'], '.3f')} ({top['steps']} steps)" if j else "–")
        row.append(f"{_num(top['metrics']['unigram_entropy'], '.3f')} ({top['steps']} steps)")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def samples_table(results: BenchResults) -> str:
    judges = judge_names(results)
    head = ["method", "steps", "NFE", "sample tok/s", "unigram H", "bigram H", "distinct-2", "repetition"]
    head += [f"{j} NLL/char" for j in judges] + [f"{j} NLL/token" for j in judges]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results.methods:
        for s in r["samples"]:
            m = s["metrics"]
            row = [r["name"], str(s["steps"]), str(s["nfe"]), _num(s["sampling_tokens_per_s"], ",.0f"),
                   _num(m["unigram_entropy"], ".3f"), _num(m["bigram_entropy"], ".3f"),
                   _num(m["distinct_2"], ".3f"), _num(m["repetition_rate"], ".3f")]
            row += [_num(s["judges"].get(j, {}).get("nats_per_char"), ".3f") for j in judges]
            row += [_num(s["judges"].get(j, {}).get("nats_per_token"), ".3f") for j in judges]
            lines.append("| " + " | ".join(row) + " |")
    for ref in results.real_text:            # the reference row: real held-out text, same judges
        row = [f"real held-out text ({ref['data']}, {ref['windows']} windows)", "–", "–", "–",
               "–", "–", "–", "–"]
        row += [_num(ref["judges"].get(j, {}).get("nats_per_char"), ".3f") for j in judges]
        row += [_num(ref["judges"].get(j, {}).get("nats_per_token"), ".3f") for j in judges]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def continuations_table(results: BenchResults) -> str:
    """One row per method that wrote prompted continuations: speed, BLEU, words, judge NLL."""
    rows = [r for r in results.methods if r.get("continuations")]
    judges = list(dict.fromkeys(j for r in rows for j in r["continuations"]["judges"]))
    head = ["method", "NFE", "tok/s", "BLEU", "exact chars", "real words"]
    head += [f"{j} NLL/char given the prompt" for j in judges]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = r["continuations"]
        row = [r["name"], str(c["nfe"]), _num(c["sampling_tokens_per_s"], ",.0f"), _num(c["bleu"], ".2f"),
               _num(c["exact_match_chars"], ".3f"), _num(c["real_word_fraction"], ".3f")]
        row += [_num(c["judges"].get(j, {}).get("nats_per_char"), ".3f") for j in judges]
        lines.append("| " + " | ".join(row) + " |")
    ref = rows[0]["continuations"] if rows else None
    if ref is not None:
        row = ["(the real continuation)", "–", "–", "100", "1", _num(ref["real_word_fraction_of_reference"], ".3f")]
        row += [_num(ref.get("reference_judges", {}).get(j, {}).get("nats_per_char"), ".3f") for j in judges]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _quote(text: str) -> str:
    return "\n".join("> " + (line or " ") for line in text.split("\n"))


def side_by_side(results: BenchResults) -> str:
    """The first continuations of every method under the prompt they continue."""
    rows = [r for r in results.methods if r.get("continuations")]
    if not rows:
        return ""
    parts = []
    for i, ex in enumerate(rows[0]["continuations"]["examples"]):
        parts += [f"**Prompt {i + 1}** (last 160 characters):", "", _quote(ex["prompt"][-160:]), "",
                  "*real continuation:*", "", _quote(ex["reference"]), ""]
        for r in rows:
            examples = r["continuations"]["examples"]
            if i < len(examples):
                parts += [f"*{r['name']}:*", "", _quote(examples[i]["generated"]), ""]
    return "\n".join(parts)


def manifest_line(results: BenchResults) -> str:
    m, hw = results.manifest, results.manifest.hardware
    commit = (m.git_commit[:12] + (" (uncommitted changes)" if m.git_dirty else "")) if m.git_commit else "not in git"
    gpu = f", GPU {hw.gpu}" if hw.gpu else ", no GPU"
    return (f"thunderdlm {m.thunderdlm} at {commit}; torch {m.torch}, python {m.python}; "
            f"{hw.cpu} ({hw.cpu_count} CPUs, {hw.torch_threads} torch threads){gpu}; seed {m.seed}; {m.date}.")


def markdown_report(results: BenchResults) -> str:
    suite = results.manifest.suite
    budget = ", ".join(f"{v:,g} {k}" for k, v in (suite.get("budget") or {}).items() if v) or "?"
    parts = [f"# Benchmark `{suite.get('name', '')}`", ""]
    if suite.get("description"):
        parts += [suite["description"], ""]
    ev, sa = suite.get("eval", {}), suite.get("sampling", {})
    parts += [f"Budget per method: {budget}. Validation: {ev.get('windows') or 'all'} windows × "
              f"{ev.get('t_samples')} t-samples (a bound for diffusion, exact for AR; nats per character "
              f"± standard error). Samples: {sa.get('n_samples')} × {sa.get('length')} tokens at "
              f"{sa.get('nfe')} steps.", ""]
    if not results.methods:
        parts += ["No method has been measured yet.", ""]
    else:
        parts += [summary_table(results), "", "## Samples by step count", "", samples_table(results), ""]
    if any(r.get("continuations") for r in results.methods):
        c = suite.get("continuations", {})
        parts += ["## Prompted continuations", "",
                  f"{c.get('n')} held-out validation windows: {c.get('context')} tokens of prompt, "
                  f"{c.get('span')} generated with {c.get('steps')} reverse steps and compared with "
                  "the real continuation (BLEU: sacrebleu 13a; exact chars: position-wise match; real "
                  "words: the share of generated words found in the training text; judge NLL: of the "
                  "continuation given the prompt, per character).", "",
                  continuations_table(results), "", "### Side by side", "", side_by_side(results), ""]
    if not judge_names(results):
        parts += ["No judge model in this suite: sample quality is shown by unigram entropy only.", ""]
    if results.warnings:
        parts += ["## Warnings", ""] + [f"- {w}" for w in results.warnings] + [""]
    parts += ["## Manifest", "", manifest_line(results), "",
              f"![validation bound vs training time]({BOUND_PLOT})", "",
              f"![sample quality vs NFE]({QUALITY_PLOT})", ""]
    return "\n".join(parts)


# ---- plots -----------------------------------------------------------------------------------------

def _figure(n_axes: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4 * n_axes, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]
    return fig, axes


def plot_bound_vs_time(results: BenchResults, path: Path) -> None:
    fig, (ax,) = _figure()
    longest = max((r["training"]["train_seconds"] for r in results.methods), default=0.0)
    scale, unit = (60.0, "minutes") if longest >= 120 else (1.0, "seconds")
    for r in results.methods:
        kind = "exact" if r["likelihood"]["exact"] else "bound"
        curve = r.get("curve") or []
        line = None
        if curve:
            (line,) = ax.plot([c["train_seconds"] / scale for c in curve], [c["nats_per_char"] for c in curve],
                              marker=".", label=f"{r['name']} ({kind})")
        like = r["likelihood"]
        se = like["stderr_per_char"] if math.isfinite(like["stderr_per_char"]) else 0.0
        ax.errorbar([r["training"]["train_seconds"] / scale], [like["nats_per_char"]], yerr=[se], fmt="*",
                    markersize=11, color=line.get_color() if line else None,
                    label=None if line else f"{r['name']} ({kind})")
    ax.set_xlabel(f"training wall time ({unit})")
    ax.set_ylabel("validation nats / character")
    finals = [r["likelihood"]["nats_per_char"] for r in results.methods]
    if finals and min(finals) > 0 and max(finals) / min(finals) > 10:
        ax.set_yscale("log")          # one method far off (e.g. a recipe that does not converge)
    ax.set_title("Validation NLL vs training time (★ = final evaluation ± se)")
    ax.grid(alpha=0.3)
    if results.methods:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def plot_quality_vs_nfe(results: BenchResults, path: Path) -> None:
    judges = judge_names(results)
    panels = [(j, f"{j} NLL / character of samples (lower is better)") for j in judges] or \
             [(None, "unigram entropy of samples (nats)")]
    fig, axes = _figure(len(panels))
    for ax, (judge, ylabel) in zip(axes, panels):
        for r in results.methods:
            rows = sorted(r["samples"], key=lambda s: s["nfe"])
            ys = [s["judges"].get(judge, {}).get("nats_per_char", float("nan")) if judge
                  else s["metrics"]["unigram_entropy"] for s in rows]
            ax.plot([s["nfe"] for s in rows], ys, marker="o", label=r["name"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if results.methods:
            ax.legend()
    axes[0].set_title("Sample quality vs NFE")
    fig.tight_layout()
    fig.savefig(path)
