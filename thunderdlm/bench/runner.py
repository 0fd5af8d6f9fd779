"""Run a planned suite: train (or reuse, or resume) every method, measure it, write the results.

A suite resumes after an interruption at every level:

- a run folder that already reached the suite's budget is reused as it is (no training);
- a partially trained one (Ctrl-C, a kill) continues from its latest checkpoint with the trainer's
  exact resume;
- a method whose measurements were saved (``<out>/methods/<name>.json``) with the same settings
  and checkpoint is not measured again, unless ``force``.

A run folder trained with a different config (another model size, learning rate, data...) is never
reused or silently overwritten: it is an error naming the differing fields, and ``retrain`` trains
it again from scratch.
"""
from __future__ import annotations

import shutil
from typing import Callable

from thunderdlm import checkpoint as ck
from thunderdlm.bench.manifest import collect_manifest
from thunderdlm.bench.measure import measure_run
from thunderdlm.bench.plan import PlannedMethod, SuitePlan
from thunderdlm.bench.results import BenchResults, read_method_result, write_json, write_results
from thunderdlm.bench.suite import SuiteError
from thunderdlm.config import to_dict
from thunderdlm.errors import CheckpointError, ThunderError
from thunderdlm.run_config import RunConfig

BUDGET_KEYS = ("max_steps", "max_minutes")

Log = Callable[[str], None]


def run_suite(plan: SuitePlan, *, only: list[str] | None = None, force: bool = False,
              retrain: bool = False, show: bool = False, log: Log = print) -> BenchResults:
    """Train and measure the suite's methods (or ``only`` these); write results.json, .md and plots."""
    from thunderdlm.bench.report import write_report

    selected = [plan.method(name) for name in only] if only else plan.methods
    for warning in plan.warnings:
        log(f"warning: {warning}")
    actions: dict[str, str] = {}
    for m in selected:
        log(f"== {m.name}: {m.process} process, {m.backbone} backbone, {m.params / 1e6:.3f}M params, "
            f"{plan.suite.budget.describe()} ==")
        trained = ensure_trained(m, retrain=retrain, show=show, log=log)
        settings = measurement_settings(plan, m)
        saved = read_method_result(plan.result_path(m.name))
        if not force and trained == "reused" and saved is not None and _same_settings(saved, settings):
            log(f"  measurements saved in {plan.result_path(m.name)} are up to date (--force measures again)")
            actions[m.name] = "cached"
            continue
        record = {**method_identity(m), "settings": settings,
                  **measure_run(m.run_dir, plan.suite, plan.judges, log)}
        write_json(plan.result_path(m.name), record)
        actions[m.name] = f"{trained}, measured"
    results = assemble(plan, actions, log)
    results.real_text = measure_real_texts(plan, log)
    write_results(results, plan.out)
    write_report(results, plan.out)
    if plan.suite.frontier.n:
        measure_suite_frontier(plan, log)
    return results


def measure_real_texts(plan: SuitePlan, log: Log) -> list[dict]:
    """The reference row of every run: real held-out text of each data folder the methods use, in
    windows of the samples' length, under the same judges (``measure.measure_real_text``)."""
    from thunderdlm.bench.measure import measure_real_text

    if not plan.judges:
        return []
    rows = []
    for data_dir in dict.fromkeys(m.cfg.data.dir for m in plan.methods):
        s = plan.suite.sampling
        row = measure_real_text(data_dir, s.n_samples, s.length, plan.judges)
        judged = ", ".join(f"{name} {j['nats_per_char']:.3f} nats/char" for name, j in row["judges"].items())
        log(f"== real held-out text of {data_dir} ({s.n_samples} windows × {s.length} tokens): {judged} ==")
        rows.append(row)
    return rows


def measure_suite_frontier(plan: SuitePlan, log: Log) -> None:
    """The speed–quality frontier of every trained method → <out>/frontier.{json,md,png}."""
    from thunderdlm.bench.frontier import run_frontier

    runs = [m.run_dir for m in plan.methods if ck.list_checkpoints(m.run_dir)]
    judge = next(iter(plan.judges.values()), None)
    log(f"== speed–quality frontier: {len(runs)} methods, {plan.suite.frontier.n} prompts ==")
    run_frontier(runs, plan.suite.frontier, judge, plan.out, seed=plan.suite.seed,
                 device=plan.suite.device, log=log,
                 meta={"suite": plan.suite.name, "judge": next(iter(plan.judges), None)})


# ---- training ------------------------------------------------------------------------------------

def ensure_trained(m: PlannedMethod, *, retrain: bool, show: bool, log: Log) -> str:
    """'reused' | 'resumed' | 'trained': bring the method's run folder to the suite's budget."""
    from thunderdlm.runfolder import RunFolder
    from thunderdlm.train import Trainer, budget_progress

    run = m.run_dir
    if retrain and run.exists():
        log(f"  --retrain: removing {run}")
        shutil.rmtree(run)
    if ck.list_checkpoints(run):
        stored = check_same_run(m)
        try:
            state = ck.read_state(ck.latest_checkpoint(run))
        except CheckpointError as e:
            raise SuiteError(f"method '{m.name}': {e}; pass --retrain to train it again") from None
        if budget_progress(m.cfg.train, state["step"], state["train_seconds"]) >= 1.0:
            if _budget(stored) != _budget(m.cfg.to_dict()):
                raise SuiteError(f"method '{m.name}': run folder '{run}' was trained for a larger budget "
                                 f"({_budget(stored)}) than the suite's ({_budget(m.cfg.to_dict())}); "
                                 "pass --retrain to train it again at the suite's budget")
            log(f"  reusing {run} (step {state['step']}, {state['train_seconds']:.1f} s of training: "
                f"budget reached)")
            return "reused"
        log(f"  resuming {run} from step {state['step']}")
        RunFolder(run).write_config(m.cfg)           # the suite's budget may have grown
        summary = Trainer(m.cfg, run, resume=True, show=show).fit()
        action = "resumed"
    else:
        unfinished = run / ck.CKPT_DIR                # only temp folders of a checkpoint never committed
        if unfinished.exists():
            shutil.rmtree(unfinished)
        log(f"  training {run}")
        summary = Trainer(m.cfg, run, show=show).fit()
        action = "trained"
    if summary.stopped_by == "interrupt":
        raise KeyboardInterrupt
    log(f"  {summary.step} steps, {summary.tokens:,} tokens in {summary.train_seconds:.1f} s of training "
        f"({summary.tokens / max(summary.train_seconds, 1e-9):,.0f} tok/s)")
    return action


def check_same_run(m: PlannedMethod) -> dict:
    """The run folder's stored config; SuiteError when it differs from the method's (budget aside)."""
    import json

    path = m.run_dir / "config.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SuiteError(f"method '{m.name}': '{path}' is unreadable ({e}); pass --retrain") from None
    diffs = _diff(_without_budget(_as_current(stored)), _without_budget(m.cfg.to_dict()))
    if diffs:
        shown = "; ".join(f"{k}: {a!r} → {b!r}" for k, a, b in diffs[:4])
        more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise SuiteError(f"method '{m.name}': run folder '{m.run_dir}' was trained with a different config "
                         f"({shown}{more}); pass --retrain to train it again, or another --out")
    return stored


def _as_current(cfg: dict) -> dict:
    """A stored run config read as today's: fields added to the schema since it was written get
    their defaults (which keep the old behaviour), so they do not count as a difference. One that
    no longer parses is returned as it is (and so differs)."""
    try:
        return RunConfig.from_data(cfg).to_dict()
    except ThunderError:
        return cfg


def _without_budget(cfg: dict) -> dict:
    train = {k: v for k, v in cfg.get("train", {}).items() if k not in BUDGET_KEYS}
    return {**cfg, "train": train}


def _budget(cfg: dict) -> dict:
    return {k: cfg.get("train", {}).get(k) for k in BUDGET_KEYS}


def _diff(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [(prefix, a, b)]


# ---- measurements ----------------------------------------------------------------------------------

def measurement_settings(plan: SuitePlan, m: PlannedMethod) -> dict:
    """What a method's measurements depend on; saved ones are reused only when this is equal."""
    ckpt = ck.latest_checkpoint(m.run_dir)
    state = ck.read_state(ckpt)
    return {"config": m.cfg.to_dict(), "checkpoint": ckpt.name, "step": state["step"],
            "train_seconds": state["train_seconds"], "eval": to_dict(plan.suite.eval),
            "sampling": to_dict(plan.suite.sampling),
            **({"continuations": to_dict(plan.suite.continuations)} if plan.suite.continuations.n else {}),
            "judges": list(plan.suite.judges),
            "seed": plan.suite.seed}


def _same_settings(saved: dict, now: dict) -> bool:
    """Whether a saved record's settings are ``now``'s. Its config is read as today's config first:
    a field added to the schema since (at its default) changes nothing that was measured."""
    settings = dict(saved.get("settings") or {})
    settings["config"] = _as_current(settings.get("config") or {})
    return settings == now


def _up_to_date(plan: SuitePlan, m: PlannedMethod, saved: dict) -> bool:
    try:
        return _same_settings(saved, measurement_settings(plan, m))
    except CheckpointError:          # the run folder is gone or damaged
        return False


def method_identity(m: PlannedMethod) -> dict:
    return {"name": m.name, "preset": m.preset, "overrides": list(m.overrides), "process": m.process,
            "backbone": m.backbone, "params": m.params, "params_non_embedding": m.params_non_embedding,
            "exact": m.exact, "run_dir": str(m.run_dir), "seq_len": m.cfg.data.seq_len,
            "batch_size": m.cfg.train.batch_size * m.cfg.train.grad_accum, "data_dir": m.cfg.data.dir}


def assemble(plan: SuitePlan, actions: dict[str, str], log: Log) -> BenchResults:
    """Every method with up-to-date saved measurements, in suite order, with ratios to the AR one."""
    records = []
    for m in plan.methods:
        saved = read_method_result(plan.result_path(m.name))
        if saved is None:
            continue
        if not _up_to_date(plan, m, saved):
            log(f"note: the saved measurements of '{m.name}' are out of date and left out of the "
                f"results; refresh them with --only {m.name}")
            continue
        records.append(saved)
    reference = next((r for r in records if r["likelihood"]["exact"]), None)
    for r in records:
        r["ratio_to_ar"] = (r["likelihood"]["nats_per_char"] / reference["likelihood"]["nats_per_char"]
                            if reference else None)
    suite_dict = {**to_dict(plan.suite), "out": str(plan.out)}
    manifest = collect_manifest(suite_dict, plan.source, plan.suite.seed)
    return BenchResults(manifest=manifest, methods=records, warnings=list(plan.warnings),
                        reference=reference["name"] if reference else None, actions=actions)


__all__ = ["run_suite", "ensure_trained", "assemble", "measurement_settings"]
