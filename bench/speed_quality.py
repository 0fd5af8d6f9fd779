"""Speed–quality frontier of trained run folders (``thunderdlm.bench.frontier``; the suite
``speed_quality`` runs the same measurement after training its methods).

Every run continues the same ``--n`` held-out prompts at batch 1 and ``--batch``: sampling tokens/s,
NFE, tokens per call, judge NLL per character given the prompt, real-word share, distinct-2; AR with
its KV cache, block diffusion at each threshold τ and at one token per call, masked diffusion at
each τ. Writes frontier.json / .md / .png into ``--out``.

    python bench/speed_quality.py runs/ar runs/block4 runs/block16 runs/masked --out docs/results/speed_quality
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from thunderdlm.bench.frontier import (FrontierSettings, frontier_table, measure_frontier,
                                       measure_hf_ar, write_frontier)
from thunderdlm.runtime import setup_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (AR, block, masked, ...)")
    ap.add_argument("--n", type=int, default=16, help="held-out prompts")
    ap.add_argument("--prompt-chars", type=int, default=128)
    ap.add_argument("--new-chars", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--masked-thresholds", type=float, nargs="+", default=None,
                    help="τ for plain masked runs (default: --thresholds)")
    ap.add_argument("--masked-block", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2, help="timings per generation (fastest kept)")
    ap.add_argument("--judge", default="smollm2", help="'smollm2', an AR run folder, or 'none'")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: every method alike)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hf-ar", default=None, metavar="FOLDER",
                    help="also a pretrained causal LM's own sampling (transformers generate) on the "
                         "prompts of the first run, e.g. ~/.cache/thunderdlm/smollm2 beside a smollm2_block run")
    ap.add_argument("--out", default="bench/results/speed_quality")
    args = ap.parse_args()
    setup_runtime(args.threads)
    s = FrontierSettings(n=args.n, prompt_chars=args.prompt_chars, new_chars=args.new_chars,
                         batch=args.batch, thresholds=args.thresholds, masked_block=args.masked_block,
                         masked_thresholds=args.masked_thresholds,
                         temperature=args.temperature, repeats=args.repeats)
    judge = None
    if args.judge != "none":
        from thunderdlm.judges import load_judge
        judge = load_judge(args.judge)
    rows = []
    for i, run in enumerate(args.runs):
        rows += measure_frontier(Path(run), s, judge, seed=args.seed, reference=i == 0)
    if args.hf_ar:
        rows += measure_hf_ar(Path(args.hf_ar).expanduser(), Path(args.runs[0]), s, judge, seed=args.seed)
    meta = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "judge": args.judge,
            "seed": args.seed, **vars(s)}
    write_frontier(rows, Path(args.out), meta)
    print(frontier_table(rows))


if __name__ == "__main__":
    main()
