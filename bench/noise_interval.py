"""BD3-LM's data-driven noise interval for a block-diffusion run (``select_noise_interval``).

Loads a trained ``block`` run, draws ``--batches`` batches of training windows, and ranks the
candidate training intervals [β_min, β_max] by the variance of the loss across batches (SPEC.md
§7.4). Writes JSON with the whole table; set the chosen interval with
``process.sampling_eps=LO process.sampling_eps_max=HI`` (evaluation always uses (0, 1]).

    python bench/noise_interval.py runs/block4 --out bench/results/noise_interval.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import thunderdlm
from thunderdlm.data import TokenData
from thunderdlm.runtime import setup_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--widths", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/noise_interval.json")
    args = ap.parse_args()
    setup_runtime(args.threads)
    lm = thunderdlm.load(args.run)
    if lm.process.name != "block":
        sys.exit(f"{args.run} is a {lm.process.name!r} run; the noise interval search is for block diffusion")
    train = TokenData(lm.cfg.data.dir).split("train")
    g = torch.Generator().manual_seed(args.seed)
    L = lm.context
    starts = torch.randint(0, len(train) - L, (args.batches, args.batch_size), generator=g)
    batches = [torch.stack([torch.as_tensor(train[s:s + L].astype("int64")) for s in row.tolist()])
               for row in starts]
    t0 = time.perf_counter()
    (lo, hi), table = lm.process.select_noise_interval(lm.model, batches, tuple(args.widths),
                                                       generator=g)
    full = table[0]
    out = {"run": args.run, "chosen": [lo, hi], "full_interval": full, "table": table,
           "seconds": time.perf_counter() - t0, "command": "python " + " ".join(sys.argv)}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    best = min(table, key=lambda r: r["var"])
    print(f"lowest-variance interval [{lo:.2f}, {hi:.2f}]: var {best['var']:.5f} "
          f"(full interval: var {full['var']:.5f}, mean {full['mean']:.3f})")


if __name__ == "__main__":
    main()
