"""Resolve and check a whole suite before any training starts.

For every method: the preset exists, its overrides are valid, the data folder is prepared, the
samples fit in its context; its full run config (budget, seed, run folder) is built and its
parameter count taken from a freshly built model. The judges are loaded (and kept, to score the
samples later). Then fairness is checked: methods whose parameter counts differ by more than the
suite's tolerance, or that see different data or window lengths, are reported as warnings — printed
and recorded in the results, never fixed silently.

Any problem is a :class:`SuiteError` naming the suite file and the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from thunderdlm.bench.suite import Suite, SuiteError
from thunderdlm.config import _closest, preset_names
from thunderdlm.errors import ThunderError
from thunderdlm.run_config import RunConfig, load_config

RUNS_DIR = "runs"        # <out>/runs/<method>/ : the run folders
METHODS_DIR = "methods"  # <out>/methods/<method>.json : measurements, saved as each completes


@dataclass
class PlannedMethod:
    name: str
    preset: str                # as resolved (a preset name or a YAML path)
    overrides: list[str]       # everything applied on top of the preset, in order
    cfg: RunConfig             # the full run config the method trains with
    run_dir: Path
    params: int
    params_non_embedding: int
    process: str
    backbone: str
    exact: bool                # exact likelihood (AR) rather than a bound


@dataclass
class SuitePlan:
    suite: Suite
    source: Path               # the suite file
    out: Path
    methods: list[PlannedMethod]
    judges: dict[str, Any] = field(default_factory=dict)   # name → loaded Judge
    warnings: list[str] = field(default_factory=list)

    def method(self, name: str) -> PlannedMethod:
        for m in self.methods:
            if m.name == name:
                return m
        raise SuiteError(f"suite '{self.source}' has no method '{name}'"
                         f"{_closest(name, [m.name for m in self.methods])}")

    def result_path(self, name: str) -> Path:
        return self.out / METHODS_DIR / f"{name}.json"


def plan_suite(suite: Suite, source: Path, out: str | Path | None = None,
               judge_loader: Callable[..., Any] | None = None) -> SuitePlan:
    """Everything checked and resolved; raises SuiteError before any training."""
    out_dir = Path(out or suite.out or f"bench/results/{suite.name}")
    methods = [_plan_method(suite, source, i, out_dir) for i in range(len(suite.methods))]
    plan = SuitePlan(suite, source, out_dir, methods)
    plan.warnings = fairness_warnings(suite, methods)
    plan.judges = load_judges(suite, source, judge_loader)
    return plan


def _plan_method(suite: Suite, source: Path, i: int, out_dir: Path) -> PlannedMethod:
    spec = suite.methods[i]
    where = f"suite '{source}': method '{spec.name}'"
    preset = resolve_preset(spec.preset, source, i)
    run_dir = out_dir / RUNS_DIR / spec.name
    overrides = [*suite.shared, *spec.overrides, f"seed={suite.seed}", f"out_dir={run_dir}"]
    try:
        # two passes: a token budget becomes steps of this method's batch shape
        first = load_config(preset, overrides + budget_overrides(suite, None))
        overrides += budget_overrides(suite, first)
        cfg = load_config(preset, overrides)
    except ThunderError as e:
        raise SuiteError(f"{where} (methods[{i}]): {e}") from None
    if suite.sampling.length > cfg.data.seq_len:
        raise SuiteError(f"suite '{source}': field 'sampling.length' is {suite.sampling.length} tokens, "
                         f"longer than method '{spec.name}''s context (data.seq_len={cfg.data.seq_len})")
    params, non_emb, exact = count_params(cfg, where)
    return PlannedMethod(spec.name, str(preset), overrides, cfg, run_dir, params, non_emb,
                         cfg.process.name, cfg.model.name, exact)


def resolve_preset(preset: str, source: Path, i: int) -> str:
    """A preset name, a YAML path, or a YAML path relative to the suite file."""
    if preset in preset_names() or Path(preset).is_file():
        return preset
    beside = source.parent / preset
    if beside.is_file():
        return str(beside)
    raise SuiteError(f"suite '{source}': field 'methods[{i}].preset': no preset or YAML file named "
                     f"'{preset}'{_closest(preset, preset_names())} (presets: {', '.join(preset_names())})")


def budget_overrides(suite: Suite, cfg: RunConfig | None) -> list[str]:
    """The trainer's budget fields for this suite's budget (tokens → whole steps of this method)."""
    b = suite.budget
    if b.kind == "minutes":
        return [f"train.max_minutes={b.minutes}", "train.max_steps=0"]
    if b.kind == "steps":
        return [f"train.max_steps={b.steps}", "train.max_minutes=0"]
    if cfg is None:                         # placeholder for the first pass; replaced below
        return ["train.max_steps=1", "train.max_minutes=0"]
    per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len
    return [f"train.max_steps={math.ceil(b.tokens / per_step)}", "train.max_minutes=0"]


def count_params(cfg: RunConfig, where: str) -> tuple[int, int, bool]:
    """(parameters, non-embedding parameters, exact likelihood) of a freshly built model."""
    from thunderdlm.data import TokenData
    from thunderdlm.processes import build_process

    try:
        data = TokenData(cfg.data.dir)
    except ThunderError as e:
        raise SuiteError(f"{where}: {e} (or point the suite at prepared data: --set data.dir=PATH)") from None
    process = build_process(cfg.process, data.vocab_size)
    model = process.build_network(cfg.model, cfg.data.seq_len)
    return model.num_params(), model.num_params(non_embedding=True), process.exact_likelihood


def fairness_warnings(suite: Suite, methods: list[PlannedMethod]) -> list[str]:
    """Differences that make the comparison unequal: parameter count, data, window length."""
    warnings = []
    if len(methods) > 1:
        lo = min(methods, key=lambda m: m.params)
        hi = max(methods, key=lambda m: m.params)
        spread = hi.params / max(lo.params, 1) - 1.0
        if spread > suite.param_tolerance:
            sizes = ", ".join(f"{m.name} {m.params / 1e6:.3f}M" for m in methods)
            warnings.append(f"parameter counts differ by {spread:.0%} (more than the suite's "
                            f"param_tolerance of {suite.param_tolerance:.0%}): {sizes}; the methods "
                            "are not compared at equal size")
    for attr in ("dir", "seq_len"):
        values = {m.name: getattr(m.cfg.data, attr) for m in methods}
        if len({str(v) for v in values.values()}) > 1:
            listed = ", ".join(f"{k}: {v}" for k, v in values.items())
            warnings.append(f"methods use different data.{attr} ({listed}); put it in the suite's "
                            "'shared' overrides to compare on the same data")
    return warnings


def load_judges(suite: Suite, source: Path, judge_loader: Callable[..., Any] | None) -> dict[str, Any]:
    """Load every judge now, so that a bad judge name fails before training, not after it."""
    if not suite.judges:
        return {}
    if judge_loader is None:
        from thunderdlm.judges import load_judge as judge_loader
    from thunderdlm.runtime import resolve_device

    device = str(resolve_device(suite.device))
    judges = {}
    for i, spec in enumerate(suite.judges):
        try:
            judges[spec] = judge_loader(spec, device=device)
        except ThunderError as e:   # JudgeError, or a run folder that does not load
            raise SuiteError(f"suite '{source}': field 'judges[{i}]': cannot load judge '{spec}': {e}") from None
    return judges
