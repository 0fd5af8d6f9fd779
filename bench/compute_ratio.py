"""How much more training compute each method needs than the autoregressive baseline.

Plaid-class continuous diffusion is reported to need ~64× the compute of an autoregressive model
for the same likelihood (Gulrajani & Hashimoto 2023). This script measures that multiplier on a
finished benchmark: for every method, the point of the AR run's training at which the AR model's
loss first reached the method's final validation value (nats per token), and the ratio of the
method's training tokens (and seconds) to the AR's at that point.

The AR model's curve is its *training* loss (an exact NLL on the windows it trains on, logged every
``log_interval`` steps; a running mean of ``--smooth`` points), because its validation loss is only
logged every ``eval_interval`` steps, too coarse for the first minute in which it passes every
diffusion method. Early in training the two agree (no over-fitting yet); ``ar_val_check`` in the
output compares them at every logged validation point. Both runs used the same data, sequence
length, batch and budget (the suite's), so tokens are a fair unit of compute; the parameter counts
are listed beside them.

    python bench/compute_ratio.py docs/results/shakespeare_char/results.json \\
        --out docs/results/shakespeare_char/compute_ratio.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(metrics: Path) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) of a run's metrics.jsonl."""
    train, val = [], []
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if "val_nelbo" in r:
            val.append(r)
        elif "loss" in r:
            train.append(r)
    return train, val


def first_reaching(train: list[dict], target: float, smooth: int) -> dict | None:
    """The first logged point where the running mean of ``smooth`` training losses is ≤ target."""
    for i in range(len(train) - smooth + 1):
        window = train[i:i + smooth]
        if sum(r["loss"] for r in window) / smooth <= target:
            mid = window[smooth // 2]
            # reached in the first window: the AR was already there at (or before) its first logs,
            # so the ratio computed against this point is only a lower bound
            return {"step": mid["step"], "tokens": mid["tokens"], "train_seconds": mid["train_seconds"],
                    "lower_bound": i == 0}
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", help="a bench results.json")
    ap.add_argument("--smooth", type=int, default=5, help="running mean over this many logged losses")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res = json.loads(Path(args.results).read_text())
    ref = next(m for m in res["methods"] if m["name"] == res["reference"])
    train, val = rows(Path(ref["run_dir"]) / "metrics.jsonl")
    check = []
    for v in val:        # the training-loss curve against the logged validation points
        near = min(train, key=lambda r: abs(r["step"] - v["step"]))
        check.append({"step": v["step"], "val": round(v["val_nelbo"], 4), "train_mean": round(
            sum(r["loss"] for r in train if abs(r["step"] - v["step"]) <= 20) /
            max(1, sum(1 for r in train if abs(r["step"] - v["step"]) <= 20)), 4), "at": near["step"]})
    out = {"reference": ref["name"], "smooth": args.smooth, "ar_val_check": check, "methods": {}}
    for m in res["methods"]:
        if m["name"] == ref["name"]:
            continue
        # nats per token: the AR curve is per token, and each method's bound is converted back
        target = m["likelihood"].get("nats_per_token", m["likelihood"]["nats_per_char"])
        hit = first_reaching(train, target, args.smooth)
        t = m["training"]
        row = {"final_nats_per_token": round(target, 4), "tokens": t["tokens"],
               "train_seconds": round(t["train_seconds"], 1), "params": m["params"],
               "ar_params": ref["params"], "ar_reaches_it_at": hit}
        ge = ""
        if hit:
            row["token_ratio"] = round(t["tokens"] / hit["tokens"], 1)
            row["time_ratio"] = round(t["train_seconds"] / hit["train_seconds"], 1)
            ge = "≥ " if hit["lower_bound"] else ""
        out["methods"][m["name"]] = row
        print(f"{m['name']:>20}: {target:.3f} nats/token; AR gets there at step "
              f"{hit['step'] if hit else '—'}; token ratio {ge}{row.get('token_ratio', '—')}×, "
              f"time ratio {ge}{row.get('time_ratio', '—')}×")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
