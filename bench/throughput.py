"""Training throughput (tokens/s) of the real trainer step, written as JSON.

Times ``Trainer._train_step`` (data batch → process.loss → backward → clip → AdamW) after a warm-up,
for one or more configurations given as presets + overrides. Also reports the speed of the last
100 timed steps relative to the first 100, which catches the denormal slow-down (DESIGN.md §5).

    python bench/throughput.py --preset shakespeare_char --steps 300 --out bench/results/throughput.json
    python bench/throughput.py --preset shakespeare_char --set model.cond_dim=32 --set train.batch_size=32
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from thunderdlm.run_config import load_config
from thunderdlm.train import Trainer


def measure(preset: str, overrides: list[str], steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(preset, overrides + [f"out_dir={tmp}/run", "train.max_steps=1000000",
                                               "train.max_minutes=0", "train.eval_interval=0"])
        trainer = Trainer(cfg, Path(tmp) / "run", show=False)
        for _ in range(warmup):
            trainer._train_step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer._train_step()
            times.append(time.perf_counter() - t0)
        tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len
        n = min(100, steps // 2)
        return {
            "preset": preset, "overrides": overrides,
            "params": trainer.raw_model.num_params(),
            "tokens_per_step": tokens,
            "tokens_per_s": tokens * steps / sum(times),
            "first_vs_last_speed": (sum(times[:n]) / max(sum(times[-n:]), 1e-9)) if n else None,
            "ms_per_step": 1000 * sum(times) / steps,
            "threads": torch.get_num_threads(),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="shakespeare_char")
    ap.add_argument("--set", action="append", default=[], help="key=value override (repeatable)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", default="bench/results/throughput.json")
    args = ap.parse_args()
    res = measure(args.preset, args.set, args.steps, args.warmup)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res.update({"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                "cpu_count": __import__("os").cpu_count(), "git_commit": commit or None})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
