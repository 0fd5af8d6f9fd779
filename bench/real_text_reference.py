"""The judge's NLL of real held-out text: the reference row every bench run measures, on its own.

Cuts ``--windows`` windows of ``--length`` tokens, evenly spaced, out of a data folder's validation
split, decodes them and scores them with a judge exactly as samples are scored
(``thunderdlm.bench.measure.measure_real_text``)::

    THUNDERDLM_THREADS=1 python bench/real_text_reference.py data/shakespeare_char --windows 16 64
"""
from __future__ import annotations

import argparse
import json
import time

from thunderdlm.bench.measure import measure_real_text
from thunderdlm.judges import load_judge
from thunderdlm.runtime import setup_runtime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="a prepared data folder")
    ap.add_argument("--windows", type=int, nargs="+", default=[16])
    ap.add_argument("--length", type=int, default=256, help="tokens per window")
    ap.add_argument("--judge", default="smollm2")
    args = ap.parse_args()
    setup_runtime()
    judge = load_judge(args.judge, device="cpu")
    for n in args.windows:
        t0 = time.perf_counter()
        row = measure_real_text(args.data, n, args.length, {args.judge: judge})
        row.pop("examples")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
