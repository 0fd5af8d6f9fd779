"""Prompts of different lengths in one padded batch (``sampling/batched.py``) against one at a time.

Samples 8 Shakespeare prompts (7–61 characters) by ``--new-tokens`` each with seeds 1..8, once as
one ``sample_prompts`` call and once prompt by prompt, and prints whether every row is equal to its
run alone, the wall time of both (best of ``--repeats``) and the batched call's network
evaluations (one thread), written as JSON to ``--out``::

    python bench/batched_prompts.py runs/final_ar --out bench/results/batched_prompts_ar.json
    python bench/batched_prompts.py runs/final_masked --block-length 16
    python bench/batched_prompts.py runs/final_block16 --tau 0.1
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import thunderdlm
from thunderdlm.processes import SampleOptions
from thunderdlm.sampling.batched import sample_prompts
from thunderdlm.bench.manifest import write_bench_json
from thunderdlm.sampling.rolling import StopRule

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = ["ROMEO:\n", "JULIET:\nO Romeo, Romeo",
           "First Citizen:\nBefore we proceed any further, hear me speak.\n", "KING HENRY:\n",
           "To be, or not to be", "MERCUTIO:\nNay, gentle Romeo, we must have you dance.\n", "HAMLET:\n",
           "LADY CAPULET:\nWhat say you? can you love the gentleman?\n"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=None)
    ap.add_argument("--tau", type=float, default=None, help="threshold decoding (low_confidence)")
    ap.add_argument("--repeats", type=int, default=3, help="timings: best of this many")
    ap.add_argument("--out", default="bench/results/batched_prompts.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = thunderdlm.load(args.run)
    options = (SampleOptions(remasking="low_confidence", threshold=args.tau) if args.tau is not None
               else SampleOptions())
    seeds = list(range(1, len(PROMPTS) + 1))
    kw = dict(new_tokens=args.new_tokens, steps=args.steps, options=options,
              block_length=args.block_length, stop=StopRule(None))
    t_batched = t_alone = float("inf")
    for _ in range(args.repeats):          # batched and alone alternate: the same machine state
        t = time.perf_counter()
        batched, res = sample_prompts(lm, PROMPTS, seeds=seeds, **kw)
        t_batched = min(t_batched, time.perf_counter() - t)
        t = time.perf_counter()
        alone = [sample_prompts(lm, [p], seeds=[s], **kw)[0][0] for p, s in zip(PROMPTS, seeds)]
        t_alone = min(t_alone, time.perf_counter() - t)
    equal = sum(a == b for a, b in zip(batched, alone))
    print(f"{args.run}: rows equal to their run alone {equal}/{len(PROMPTS)}; batched {t_batched:.2f} s "
          f"(nfe {res.nfe}), one at a time {t_alone:.2f} s; {t_alone / t_batched:.2f}x")
    write_bench_json({"run": args.run, "prompts": PROMPTS, "seeds": seeds, "new_tokens": args.new_tokens,
                      "steps": args.steps, "block_length": args.block_length, "tau": args.tau,
                      "rows_equal_to_alone": equal, "rows": len(PROMPTS),
                      "batched_seconds": round(t_batched, 3), "batched_nfe": res.nfe,
                      "one_at_a_time_seconds": round(t_alone, 3),
                      "speedup": round(t_alone / t_batched, 2)}, args.out, ROOT)

if __name__ == "__main__":
    main()
