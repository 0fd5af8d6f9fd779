"""Does generated text stay English? Held-out Shakespeare gaps (or continuations) filled by each run,
scored the same way.

For every run, ``--n`` validation windows evenly spaced over the split; in each a gap of about
``--span-chars`` characters between about ``--context-chars`` known characters (``--mode infill``:
half left, half right; ``--mode continue``: all of them before the gap, a prompted continuation),
converted to the run's own tokens with its validation characters-per-token, so runs with
different tokenizers fill gaps of the same size in text. Per run it reports (JSON):

- ``real_word_fraction``: the share of words (``[A-Za-z']+``) in the generated gaps that occur in
  the training split's text — a word-level "is it English / Shakespeare's vocabulary" check that
  does not depend on the tokenizer;
- BLEU and exact-character agreement with the real gap (``thunderdlm.evaluate.evaluate_spans``);
- a few examples.

    python bench/infill_english.py bench/results/smollm2_adapt/runs/smollm2_masked \\
        bench/results/smollm2_adapt/runs/ddit_char --out docs/results/smollm2_adapt/infill_english.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import thunderdlm
from thunderdlm.data import TokenData
from thunderdlm.evaluate import evaluate_spans
from thunderdlm.bench.measure import training_vocabulary
from thunderdlm.sample_metrics import real_word_fraction


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="run folders (any process that can infill)")
    ap.add_argument("--n", type=int, default=32, help="validation windows")
    ap.add_argument("--context-chars", type=int, default=154)
    ap.add_argument("--span-chars", type=int, default=51)
    ap.add_argument("--mode", choices=("infill", "continue"), default="infill")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a run's stored config before sampling, e.g. "
                         "process.scheduling_matrix=pyramid (repeatable)")
    ap.add_argument("--out", default="bench/results/infill_english.json")
    args = ap.parse_args()
    rows = {}
    for run in args.runs:
        lm = thunderdlm.load(run, overrides=args.set)
        data = TokenData(lm.cfg.data.dir)
        cpt = data.chars_per_token("val")
        context, span = round(args.context_chars / cpt), max(1, round(args.span_chars / cpt))
        known = training_vocabulary(lm, data)
        r = evaluate_spans(lm, args.n, mode=args.mode, context=context, span=span, steps=span,
                           seed=args.seed)
        gen_frac, n_gen = real_word_fraction(r["generated"], known)
        rows[Path(run).name] = {
            "run": str(run), "tokens": {"context": context, "span": span, "chars_per_token": cpt},
            "real_word_fraction": gen_frac, "words_generated": n_gen,
            "real_word_fraction_of_reference": real_word_fraction(r["references"], known)[0],
            "bleu": r["bleu"]["score"], "exact_match_chars": r["exact_match_chars"],
            "examples": r["examples"][:4]}
        print(Path(run).name, {k: v for k, v in rows[Path(run).name].items()
                               if k in ("real_word_fraction", "words_generated", "bleu")}, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "runs": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
