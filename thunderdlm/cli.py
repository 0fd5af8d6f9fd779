"""``thunderdlm`` command line: data | train | sample | eval | presets.

Errors the user can cause are printed as one line naming the field or file (exit code 2), never as
a traceback; set THUNDERDLM_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from thunderdlm.errors import ThunderError


# ---- data ---------------------------------------------------------------------------------------------

def cmd_data_prepare(args) -> int:
    from thunderdlm.data import TokenData, prepare_data

    if args.source and args.text:
        raise ThunderError("give either a named corpus (shakespeare) or --text PATH..., not both")
    source = None if args.text else (args.source or "shakespeare")
    if source not in (None, "shakespeare"):
        raise ThunderError(f"unknown corpus '{source}': the named corpus is 'shakespeare'; "
                           "for your own text use --text PATH... (files, folders, .jsonl)")
    out = args.out or f"data/{source or 'custom'}_{args.tokenizer}"
    folder = prepare_data(out, source=source, paths=args.text, tokenizer=args.tokenizer,
                          vocab_size=args.vocab_size, hf_path=args.hf_path,
                          val_fraction=args.val_fraction, text_field=args.text_field)
    data = TokenData(folder)
    meta = data.meta
    print(f"wrote {folder}: tokenizer {meta.get('tokenizer')} (vocab {data.vocab_size}), "
          f"{len(data.split('train')):,} train / {len(data.split('val')):,} val tokens")
    return 0


# ---- train ---------------------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from thunderdlm.run_config import load_config
    from thunderdlm.train import Trainer, resume

    if args.resume:
        extra = ([args.config] if args.config else []) + args.overrides
        summary = resume(args.resume, extra, show=not args.quiet)
    else:
        if not args.config:
            raise ThunderError("give a config (a preset name or a YAML file), or --resume RUN")
        cfg = load_config(args.config, args.overrides)
        summary = Trainer(cfg, Path(cfg.out_dir), show=not args.quiet).fit()
    print(f"{summary.run_dir}: {summary.step} steps, {summary.tokens:,} tokens in "
          f"{summary.train_seconds / 60:.1f} min ({summary.tokens / max(summary.train_seconds, 1e-9):,.0f} tok/s), "
          f"last loss {summary.last_loss:.4f}")
    return 0


# ---- sample --------------------------------------------------------------------------------------------

def cmd_sample(args) -> int:
    import thunderdlm
    from thunderdlm.display import Crystallizer

    lm = thunderdlm.load(args.run, checkpoint=args.checkpoint, device=args.device)
    kwargs = dict(infill=args.infill, length=args.length, n=args.n, steps=args.steps, seed=args.seed,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  remasking=args.remasking, block_length=args.block_length)
    if args.live:
        with Crystallizer(lm.token_str, lm.process.noise_token_id) as live:
            texts, res = lm.sample(args.prompt, callback=live, **kwargs)
    else:
        texts, res = lm.sample(args.prompt, **kwargs)
    if args.json:
        print(json.dumps({"samples": texts, "nfe": res.nfe, "steps": res.steps}, indent=1))
        return 0
    for i, text in enumerate(texts):
        print(f"=== sample {i + 1}/{len(texts)} ({res.steps} steps, {res.nfe} network evaluations) ===")
        print(text)
    return 0


# ---- eval ----------------------------------------------------------------------------------------------

def cmd_eval(args) -> int:
    import thunderdlm
    from thunderdlm.checkpoint import atomic_write_text

    lm = thunderdlm.load(args.run, checkpoint=args.checkpoint, device=args.device)
    res = lm.evaluate(args.data, windows=args.windows, t_samples=args.t_samples,
                      batch_size=args.batch_size, seed=args.seed)
    out = Path(args.json) if args.json else Path(args.run) / "eval.json"
    atomic_write_text(out, json.dumps(res, indent=1))
    kind = "exact NLL" if res["exact"] else "NLL bound (NELBO)"
    print(f"validation {kind}: {res['nats_per_token']:.4f} ± {res['stderr']:.4f} nats/token, "
          f"{res['nats_per_char']:.4f} nats/char, {res['bits_per_char']:.4f} bits/char "
          f"({res['windows']} windows × {res['seq_len']} tokens, {res['t_samples']} t-samples each) → {out}")
    return 0


def cmd_presets(args) -> int:
    from thunderdlm.config import load_yaml, preset_names

    for name in preset_names():
        data = load_yaml(name)
        print(f"{name:28s} process={data.get('process', {}).get('name', 'masked')} "
              f"model={data.get('model', {}).get('name', 'ddit')} out_dir={data.get('out_dir', '')}")
    return 0


# ---- parser --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thunderdlm", description="Diffusion language models: train, sample, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare corpora").add_subparsers(dest="data_command", required=True)
    prep = data.add_parser("prepare", help="tokenize a corpus into token bins + tokenizer")
    prep.add_argument("source", nargs="?", help="named corpus: shakespeare (default)")
    prep.add_argument("--text", nargs="+", help="your own text files, folders or .jsonl files")
    prep.add_argument("--text-field", default="text", help="field holding the text in .jsonl (default: text)")
    prep.add_argument("--tokenizer", default="char", choices=["char", "bpe", "word", "hf"])
    prep.add_argument("--vocab-size", type=int, default=None, help="bpe/word vocabulary size")
    prep.add_argument("--hf-path", default=None, help="hf tokenizer: a local folder or a .gguf file")
    prep.add_argument("--val-fraction", type=float, default=0.1)
    prep.add_argument("--out", default=None, help="data folder to write (default data/<corpus>_<tokenizer>)")
    prep.set_defaults(func=cmd_data_prepare)

    tr = sub.add_parser("train", help="train a model (or --resume a run)")
    tr.add_argument("config", nargs="?", help="preset name (see `thunderdlm presets`) or YAML file")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-3 out_dir=runs/x")
    tr.add_argument("--resume", metavar="RUN", help="continue a run folder from its latest checkpoint")
    tr.add_argument("--quiet", action="store_true", help="no progress display")
    tr.set_defaults(func=cmd_train)

    sa = sub.add_parser("sample", help="generate text from a run")
    sa.add_argument("run")
    sa.add_argument("--steps", type=int, default=64, help="reverse steps (network evaluations at most)")
    sa.add_argument("--length", type=int, default=None, help="tokens to generate (default: the context)")
    sa.add_argument("--prompt", default=None, help="text to continue")
    sa.add_argument("--infill", default=None, help="template with [MASK:N] spans, e.g. 'To be, or [MASK:12] the question'")
    sa.add_argument("--n", type=int, default=1, help="number of samples")
    sa.add_argument("--seed", type=int, default=None)
    sa.add_argument("--temperature", type=float, default=1.0)
    sa.add_argument("--top-k", type=int, default=0)
    sa.add_argument("--top-p", type=float, default=1.0)
    sa.add_argument("--remasking", default="ancestral", choices=["ancestral", "low_confidence", "random"],
                    help="ancestral (MDLM) or LLaDA's fixed-count unmasking by confidence / at random")
    sa.add_argument("--block-length", type=int, default=None, help="semi-autoregressive blocks (LLaDA)")
    sa.add_argument("--live", action="store_true", help="show the first sample crystallising step by step")
    sa.add_argument("--json", action="store_true", help="print JSON")
    sa.add_argument("--checkpoint", default=None, help="checkpoint folder name (default: latest)")
    sa.add_argument("--device", default="auto")
    sa.set_defaults(func=cmd_sample)

    ev = sub.add_parser("eval", help="validation NLL bound of a run")
    ev.add_argument("run")
    ev.add_argument("--data", default=None, help="data folder (default: the run's)")
    ev.add_argument("--windows", type=int, default=0, help="validation windows (0 = the whole split)")
    ev.add_argument("--t-samples", type=int, default=4, help="Monte Carlo t-samples per window")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", default=None, help="where to write the JSON (default RUN/eval.json)")
    ev.add_argument("--checkpoint", default=None)
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("presets", help="list the config presets")
    pr.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after options: `train CFG --quiet a.b=1`
        if args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = args.overrides + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except ThunderError as e:
        if os.environ.get("THUNDERDLM_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
