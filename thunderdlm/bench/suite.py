"""A benchmark suite: which methods to compare, on what budget, and how to measure them.

A suite is a YAML file (``thunderdlm/suites/NAME.yaml`` or any path) read into the typed
:class:`Suite` dataclass with the same machinery as run configs (``thunderdlm/config.py``): an
unknown key gets a "did you mean" error, and every error names the suite file and the field.

    methods:                       # what is compared; each becomes one run folder
      - {name: masked_ddit, preset: shakespeare_char}
      - {name: ar_gpt, preset: shakespeare_char_ar, overrides: [train.lr=1e-3]}
    budget: {minutes: 8}           # the same training budget for every method
    shared: [data.dir=data/shakespeare_char, data.seq_len=256]   # the same data for every method
    eval: {t_samples: 4, windows: 0}
    sampling: {n_samples: 16, length: 256, nfe: [16, 64, 256]}
    judges: [smollm2]

A method's run config is: its preset, then the suite's ``shared`` overrides, then its own
``overrides``, then what the suite owns (budget, seed, run folder) — so the budget and the seed
cannot differ between methods.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from thunderdlm.config import _closest, apply_overrides, from_dict, load_yaml, param, parse_override
from thunderdlm.errors import ConfigError

SUITE_DIR = Path(__file__).resolve().parent.parent / "suites"

#: run-config sections a ``--set`` key may address (it then joins the suite's shared overrides)
RUN_SECTIONS = ("data", "model", "process", "train")

#: run-config keys the suite owns; a method may not override them (the comparison would be unfair)
OWNED_KEYS = {"train.max_steps": "budget", "train.max_minutes": "budget", "seed": "seed",
              "out_dir": "out"}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SuiteError(ConfigError):
    """A suite file is malformed or names something that does not exist."""


def suite_check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise SuiteError(f"field '{field}': {message}")


@dataclass
class MethodSpec:
    name: str = param("", help="short unique name (its run folder and its row in the tables)")
    preset: str = param("", help="a run-config preset (`thunderdlm presets`) or a YAML path")
    overrides: list[str] = param(default_factory=list,
                                 help="key=value overrides of this method's run config "
                                      "(applied after the suite's shared overrides)")


@dataclass
class Budget:
    minutes: float = param(0.0, help="training wall-clock minutes per method "
                                     "(evaluation and checkpoint time not counted)")
    tokens: int = param(0, help="training tokens per method (rounded up to whole optimiser steps)")
    steps: int = param(0, help="optimiser steps per method (CI-sized suites: equal steps are not "
                               "equal compute when batch sizes differ)")

    def __post_init__(self):
        for name in ("minutes", "tokens", "steps"):
            suite_check(getattr(self, name) >= 0, f"budget.{name}", f"must be ≥ 0, got {getattr(self, name)}")
        chosen = [n for n in ("minutes", "tokens", "steps") if getattr(self, n) > 0]
        suite_check(len(chosen) == 1, "budget",
                    f"set exactly one of budget.minutes, budget.tokens, budget.steps (got {chosen or 'none'})")

    @property
    def kind(self) -> str:
        return next(n for n in ("minutes", "tokens", "steps") if getattr(self, n) > 0)

    def describe(self) -> str:
        return {"minutes": f"{self.minutes:g} min", "tokens": f"{self.tokens:,} tokens",
                "steps": f"{self.steps:,} steps"}[self.kind] + " per method"


@dataclass
class EvalSettings:
    t_samples: int = param(4, help="Monte Carlo t-samples per validation window (the bound's draws)")
    windows: int = param(0, help="validation windows scored (0 = the whole validation split)")
    batch_size: int = param(64, help="windows per forward pass during evaluation")

    def __post_init__(self):
        suite_check(self.t_samples >= 1, "eval.t_samples", f"must be ≥ 1, got {self.t_samples}")
        suite_check(self.windows >= 0, "eval.windows", f"must be ≥ 0 (0 = all), got {self.windows}")
        suite_check(self.batch_size >= 1, "eval.batch_size", f"must be ≥ 1, got {self.batch_size}")


@dataclass
class SamplingSettings:
    n_samples: int = param(8, help="unconditional samples drawn per step count")
    length: int = param(256, help="tokens per sample (at most every method's data.seq_len)")
    batch_size: int = param(64, help="samples drawn per sampler call (speed is measured over all of them)")
    nfe: list[int] = param(default_factory=lambda: [16, 64, 256],
                           help="reverse step counts to sample at (the network evaluations of a "
                                "diffusion sampler; an AR sampler always needs `length`)")

    def __post_init__(self):
        suite_check(self.n_samples >= 1, "sampling.n_samples", f"must be ≥ 1, got {self.n_samples}")
        suite_check(self.length >= 1, "sampling.length", f"must be ≥ 1, got {self.length}")
        suite_check(self.batch_size >= 1, "sampling.batch_size", f"must be ≥ 1, got {self.batch_size}")
        suite_check(len(self.nfe) >= 1, "sampling.nfe", "list at least one step count, e.g. [16, 64, 256]")
        for i, steps in enumerate(self.nfe):
            suite_check(steps >= 1, f"sampling.nfe[{i}]", f"a step count must be ≥ 1, got {steps}")
        suite_check(len(set(self.nfe)) == len(self.nfe), "sampling.nfe", f"has duplicates: {self.nfe}")


@dataclass
class ContinuationSettings:
    n: int = param(0, help="held-out validation windows whose prompted continuation every method "
                           "writes (0 = no continuation measurements)")
    context: int = param(128, help="prompt tokens given (the start of each window)")
    span: int = param(64, help="tokens generated after the prompt (compared with the real ones)")
    steps: int = param(64, help="reverse steps for the span (an AR sampler always needs `span`)")
    batch_size: int = param(64, help="windows per sampler call")
    examples: int = param(4, help="continuations shown side by side in the report")

    def __post_init__(self):
        suite_check(self.n >= 0, "continuations.n", f"must be ≥ 0 (0 = off), got {self.n}")
        for name in ("context", "span", "steps", "batch_size"):
            suite_check(getattr(self, name) >= 1, f"continuations.{name}",
                        f"must be ≥ 1, got {getattr(self, name)}")
        suite_check(self.examples >= 0, "continuations.examples", f"must be ≥ 0, got {self.examples}")


@dataclass
class FrontierSettings:
    """The speed–quality frontier (``bench/frontier.py``), measured after every method is trained."""

    n: int = param(0, help="held-out prompts every method continues at batch 1 and `batch` "
                           "(0 = no frontier)")
    prompt_chars: int = param(128, help="characters of prompt")
    new_chars: int = param(128, help="characters to generate (converted to each run's tokens)")
    batch: int = param(16, help="the second batch size (the first is 1)")
    thresholds: list[float] = param(default_factory=lambda: [0.5, 0.7, 0.9],
                                    help="confidence thresholds τ for block / masked diffusion")
    masked_thresholds: list[float] | None = param(
        None, help="thresholds τ for plain masked diffusion (None = `thresholds`): a masked model "
                   "decodes ~16x slower than a block model, so a long τ sweep on it costs the most")
    masked_block: int = param(16, help="block length of threshold decoding on a plain masked model")
    temperature: float = param(1.0, help="sampling temperature of every setting")
    repeats: int = param(2, help="times each generation is timed (the fastest counts: the least "
                                 "disturbed on a shared machine); the tokens are the same each time")

    def __post_init__(self):
        suite_check(self.repeats >= 1, "frontier.repeats", f"must be ≥ 1, got {self.repeats}")
        suite_check(self.n >= 0, "frontier.n", f"must be ≥ 0 (0 = off), got {self.n}")
        for name in ("prompt_chars", "new_chars", "batch", "masked_block"):
            suite_check(getattr(self, name) >= 1, f"frontier.{name}",
                        f"must be ≥ 1, got {getattr(self, name)}")
        for name in ("thresholds", "masked_thresholds"):
            for i, tau in enumerate(getattr(self, name) or []):
                suite_check(0.0 <= tau <= 1.0, f"frontier.{name}[{i}]", f"must be in [0, 1], got {tau}")
        suite_check(self.masked_thresholds is None or len(self.masked_thresholds) > 0,
                    "frontier.masked_thresholds", "must list at least one τ, or be null (= thresholds)")
        suite_check(self.temperature >= 0, "frontier.temperature", f"must be ≥ 0, got {self.temperature}")


@dataclass
class Suite:
    name: str = param("", help="the suite's name (default: its file name)")
    description: str = param("", help="one line saying what the suite compares")
    methods: list[MethodSpec] = param(default_factory=list, help="the methods compared")
    budget: Budget = param(default_factory=lambda: Budget(minutes=8.0), help="training budget per method")
    shared: list[str] = param(default_factory=list,
                              help="key=value run-config overrides applied to every method (data, seq_len)")
    seed: int = param(1337, help="seed of every method's weights, data order and noise, and of sampling")
    eval: EvalSettings = param(default_factory=EvalSettings, help="likelihood evaluation")
    sampling: SamplingSettings = param(default_factory=SamplingSettings, help="sample quality")
    continuations: ContinuationSettings = param(default_factory=ContinuationSettings,
                                                help="prompted continuations of held-out text "
                                                     "(BLEU, real words, judge NLL given the prompt)")
    frontier: FrontierSettings = param(default_factory=FrontierSettings,
                                       help="speed–quality frontier: the same held-out prompts "
                                            "continued by every method at batch 1 and B")
    judges: list[str] = param(default_factory=list,
                              help="judge models for generative NLL: 'smollm2' or an AR run folder "
                                   "(empty: no judge)")
    param_tolerance: float = param(0.25, help="warn when the methods' parameter counts differ by more "
                                              "than this fraction (largest / smallest − 1)")
    device: str = param("auto", help="device for evaluation, sampling and judges (auto | cpu | cuda); "
                                     "training uses train.device (e.g. shared: [train.device=cpu])")
    out: str = param("", help="output folder (default: bench/results/<name>)")

    def __post_init__(self):
        suite_check(len(self.methods) >= 1, "methods", "list at least one method ({name, preset})")
        seen: dict[str, int] = {}
        for i, m in enumerate(self.methods):
            suite_check(bool(m.name), f"methods[{i}].name", "is missing; give every method a short unique name")
            suite_check(bool(_NAME.match(m.name)), f"methods[{i}].name",
                        f"{m.name!r} must be letters, digits, '_', '-' or '.' (it names a folder)")
            suite_check(m.name not in seen, f"methods[{i}].name",
                        f"duplicate method name {m.name!r} (also methods[{seen.get(m.name)}])")
            seen[m.name] = i
            suite_check(bool(m.preset), f"methods[{i}].preset",
                        f"method {m.name!r} needs a preset (see `thunderdlm presets`) or a YAML path")
            _check_not_owned(m.overrides, f"methods[{i}].overrides")
        _check_not_owned(self.shared, "shared")
        suite_check(len(set(self.judges)) == len(self.judges), "judges", f"has duplicates: {self.judges}")
        for i, j in enumerate(self.judges):
            suite_check(bool(str(j).strip()), f"judges[{i}]", "is empty")
        suite_check(self.param_tolerance >= 0, "param_tolerance", f"must be ≥ 0, got {self.param_tolerance}")

    def method_names(self) -> list[str]:
        return [m.name for m in self.methods]


def _check_not_owned(overrides: list[str], where: str) -> None:
    for i, text in enumerate(overrides):
        keys, _ = parse_override(text)
        key = ".".join(keys)
        if key in OWNED_KEYS:
            raise SuiteError(f"field '{where}[{i}]': '{key}' is set by the suite's '{OWNED_KEYS[key]}' "
                             f"field for every method alike; change it there")


# ---- loading -----------------------------------------------------------------------------------

def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def suite_path(source: str | Path) -> Path:
    """A suite name (``thunderdlm/suites/NAME.yaml``) or a YAML path → the file."""
    path = Path(source)
    if path.is_file():
        return path
    named = SUITE_DIR / f"{source}.yaml"
    if not path.suffix and named.exists():
        return named
    raise SuiteError(f"no suite named '{source}' and no such file{_closest(str(source), suite_names())} "
                     f"(suites: {', '.join(suite_names())}; or pass a YAML path)")


def load_suite(source: str | Path, sets: list[str] | None = None) -> tuple[Suite, Path]:
    """Read and validate a suite; ``sets`` are ``key=value`` strings (see :func:`route_sets`)."""
    path = suite_path(source)
    try:
        data = load_yaml(path)
        suite_sets, shared_sets = route_sets(sets or [])
        if any(parse_override(s)[0][0] == "budget" for s in suite_sets):
            data["budget"] = {}   # `--set budget.steps=5` replaces the file's budget, whatever its kind
        data = apply_overrides(data, suite_sets)
        if shared_sets:
            data["shared"] = list(data.get("shared") or []) + shared_sets
        suite = from_dict(Suite, data)
    except SuiteError as e:
        raise SuiteError(f"suite '{path}': {e}") from None
    except ConfigError as e:  # from_dict says "config field 'x'"; here it is a suite field
        raise SuiteError(f"suite '{path}': {str(e).replace('config ', '', 1)}") from None
    if not suite.name:
        suite.name = path.stem
    return suite, path


def route_sets(sets: list[str]) -> tuple[list[str], list[str]]:
    """Split ``--set`` strings: a suite field (``budget.minutes=2``, ``sampling.nfe=[8,32]``) or a
    run-config key (``data.dir=...``, ``model.n_layer=2``), which joins the shared overrides."""
    suite_fields = list(Suite.__dataclass_fields__)
    suite_sets, shared = [], []
    for text in sets:
        keys, _ = parse_override(text)
        if keys[0] in suite_fields:
            suite_sets.append(text)
        elif keys[0] in RUN_SECTIONS:
            shared.append(text)
        else:
            raise SuiteError(f"--set '{text}': '{keys[0]}' is neither a suite field nor a run-config "
                             f"section{_closest(keys[0], suite_fields + list(RUN_SECTIONS))}")
    return suite_sets, shared
