"""Masked diffusion vs the autoregressive model of the same shape, at equal CPU training time.

Trains each preset for ``--minutes`` of training time (reusing a run that already finished), then
evaluates the validation NLL bound on the whole validation split (``--t-samples`` draws per window)
and draws 256-character samples at 64 steps. Writes JSON with a manifest (git commit, torch,
machine) and prints a markdown table.

    python bench/shakespeare_quality.py --minutes 8 --out bench/results/shakespeare_quality.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

import thunderdlm
from thunderdlm.checkpoint import list_checkpoints
from thunderdlm.run_config import load_config
from thunderdlm.train import Trainer


def train_or_reuse(preset: str, overrides: list[str], minutes: float, root: Path) -> Path:
    run = root / preset
    cfg = load_config(preset, overrides + [f"train.max_minutes={minutes}", "train.max_steps=0", f"out_dir={run}"])
    if list_checkpoints(run):
        state = json.loads((sorted(list_checkpoints(run))[-1] / "state.json").read_text())
        if state["train_seconds"] >= 60 * minutes - 1:
            print(f"{preset}: reusing {run}")
            return run
    Trainer(cfg, run, show=False).fit()
    return run


def measure(run: Path, t_samples: int, n_samples: int) -> dict:
    lm = thunderdlm.load(run)
    t0 = time.perf_counter()
    ev = lm.evaluate(windows=0, t_samples=t_samples)
    eval_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    texts, res = lm.sample(length=256, steps=64, n=n_samples, seed=0)
    sample_s = time.perf_counter() - t0
    state = json.loads((lm.checkpoint / "state.json").read_text())
    return {"run": str(run), "process": lm.cfg.process.name, "model": lm.cfg.model.name,
            "params": lm.model.num_params(), "seq_len": lm.context, "steps": state["step"],
            "tokens": state["tokens"], "train_seconds": state["train_seconds"],
            "train_tok_s": state["tokens"] / state["train_seconds"],
            "val_nats_per_char": ev["nats_per_char"], "val_stderr": ev["stderr"],
            "val_bits_per_char": ev["bits_per_char"], "exact": ev["exact"], "windows": ev["windows"],
            "t_samples": ev["t_samples"], "eval_seconds": eval_s,
            "sample_nfe": res.nfe, "sample_tok_s": n_samples * 256 / sample_s, "samples": texts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--presets", nargs="+", default=["shakespeare_char", "shakespeare_char_ar"])
    ap.add_argument("--set", action="append", default=[], help="override applied to every preset")
    ap.add_argument("--runs", default="bench/runs")
    ap.add_argument("--t-samples", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--out", default="bench/results/shakespeare_quality.json")
    args = ap.parse_args()
    results = []
    for preset in args.presets:
        run = train_or_reuse(preset, args.set, args.minutes, Path(args.runs))
        results.append({"preset": preset, **measure(run, args.t_samples, args.samples)})
    ar = [r for r in results if r["exact"]]
    for r in results:
        r["ratio_to_ar"] = r["val_nats_per_char"] / ar[0]["val_nats_per_char"] if ar else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    manifest = {"minutes": args.minutes, "overrides": args.set, "git_commit": commit, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"manifest": manifest, "results": results}, indent=1))
    print("| preset | process | params | seq | steps | train tok/s | val nats/char (± se) | ratio to AR |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        kind = "exact" if r["exact"] else "bound"
        ratio = f"{r['ratio_to_ar']:.3f}" if r["ratio_to_ar"] else "-"
        print(f"| {r['preset']} | {r['process']} | {r['params'] / 1e6:.2f}M | {r['seq_len']} | {r['steps']} | "
              f"{r['train_tok_s']:,.0f} | {r['val_nats_per_char']:.3f} ± {r['val_stderr']:.3f} ({kind}) | {ratio} |")


if __name__ == "__main__":
    main()
