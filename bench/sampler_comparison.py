"""Masked-diffusion samplers at a fixed step count, measured the same way as the benchmark.

Draws ``--n`` samples of ``--length`` tokens at ``--steps`` steps from a masked-diffusion run with
each reverse-step setting (MDLM ancestral; ancestral with top-p 0.9 or temperature 0.8; LLaDA's
low-confidence remasking), scores them with ``thunderdlm.evaluate.evaluate_samples`` (sample
metrics + judges) and writes JSON with the first sample of each::

    python bench/sampler_comparison.py bench/results/shakespeare_char/runs/masked_ddit \\
        --out bench/results/samplers_64_steps.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import thunderdlm
from thunderdlm.evaluate import evaluate_samples
from thunderdlm.judges import load_judge

SETTINGS = {
    "ancestral": {},
    "ancestral_top_p0.9": {"top_p": 0.9},
    "ancestral_T0.8": {"temperature": 0.8},
    "low_confidence": {"remasking": "low_confidence"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a masked-diffusion run folder")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--judge", default="smollm2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/samplers.json")
    args = ap.parse_args()
    lm = thunderdlm.load(args.run)
    judge = load_judge(args.judge)
    rows = {}
    for name, kwargs in SETTINGS.items():
        r = evaluate_samples(lm, args.n, args.steps, args.length, [judge], seed=args.seed, **kwargs)
        rows[name] = {"judge_nats_per_char": r["judges"][judge.name]["nats_per_char"],
                      "unigram_entropy": r["metrics"]["unigram_entropy"],
                      "distinct_2": r["metrics"]["distinct_2"],
                      "repetition": r["metrics"]["repetition_rate"], "first": r["texts"][0]}
        print(name, {k: round(v, 4) for k, v in rows[name].items() if k != "first"}, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": args.run, "steps": args.steps, "length": args.length, "n": args.n,
                               "judge": judge.name, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
