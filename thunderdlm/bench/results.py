"""The results of a suite on disk: one JSON per method as it completes, and ``results.json``.

``<out>/methods/<name>.json`` holds one method's measurements together with the settings they were
taken with (run config, checkpoint, evaluation and sampling settings, judges); a rerun reuses it
only when those settings are still the same. ``<out>/results.json`` is a :class:`BenchResults`:
the manifest, every measured method in suite order, the fairness warnings and the reference
(exact-likelihood) method that ratios are taken to. :func:`load_results` reads it back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thunderdlm.bench.manifest import Manifest
from thunderdlm.checkpoint import atomic_write_text
from thunderdlm.config import from_dict, param, to_dict
from thunderdlm.errors import ThunderError

RESULTS_FILE = "results.json"


@dataclass
class BenchResults:
    manifest: Manifest = param(default_factory=Manifest, help="what produced these numbers")
    methods: list[dict[str, Any]] = param(default_factory=list, help="one record per measured method")
    warnings: list[str] = param(default_factory=list, help="fairness warnings (size, data)")
    reference: str | None = param(None, help="the exact-likelihood method ratios are taken to")
    real_text: list[dict[str, Any]] = param(
        default_factory=list, help="the reference row, measured by every run of the suite: the "
                                   "judges' NLL of real held-out windows, one entry per data folder")
    actions: dict[str, str] = param(default_factory=dict,
                                    help="what the run that wrote this file did per method")

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchResults":
        return from_dict(cls, data, "results")

    def method(self, name: str) -> dict:
        for m in self.methods:
            if m["name"] == name:
                return m
        raise KeyError(name)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1))


def write_results(results: BenchResults, out: Path) -> Path:
    path = Path(out) / RESULTS_FILE
    write_json(path, results.to_dict())
    return path


def load_results(path: str | Path) -> BenchResults:
    """Read ``results.json`` (or the folder holding it) back into a BenchResults."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.exists():
        raise ThunderError(f"no benchmark results at '{path}'; run `thunderdlm bench SUITE` first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ThunderError(f"'{path}' is not valid JSON ({e}); run the suite again") from None
    return BenchResults.from_dict(data)


def read_method_result(path: Path) -> dict | None:
    """A method's saved measurements, or None when missing or unreadable (then it is measured again)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


__all__ = ["BenchResults", "load_results", "write_results", "read_method_result", "write_json"]
