"""The manifest of a benchmark result: everything needed to know what produced the numbers.

The suite as it was run (after ``--set``), its seed, the code version (git commit and whether the
tree had uncommitted changes), the library versions and the hardware. A manifest is a typed
dataclass that round-trips through JSON exactly (``Manifest.from_dict(m.to_dict()) == m``).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thunderdlm.config import from_dict, param, to_dict


@dataclass
class Hardware:
    cpu: str = param("", help="CPU model name")
    cpu_count: int = param(0, help="logical CPUs of the machine")
    torch_threads: int = param(0, help="torch intra-op threads used")
    gpu: str | None = param(None, help="name of CUDA device 0, or null without a GPU")
    gpu_count: int = param(0, help="CUDA devices visible")
    machine: str = param("", help="architecture (platform.machine())")
    system: str = param("", help="operating system (platform.platform())")


@dataclass
class Manifest:
    suite: dict[str, Any] = param(default_factory=dict, help="the suite as run (after --set)")
    suite_file: str = param("", help="the suite file it was read from")
    seed: int = param(0, help="the suite's seed (weights, data order, noise, sampling)")
    git_commit: str | None = param(None, help="`git rev-parse HEAD` of the thunderdlm source, or null")
    git_dirty: bool | None = param(None, help="uncommitted changes in that tree (null outside git)")
    thunderdlm: str = param("", help="thunderdlm version")
    torch: str = param("", help="torch version")
    python: str = param("", help="python version")
    hardware: Hardware = param(default_factory=Hardware, help="where it ran")
    date: str = param("", help="when the results were written (local time, ISO 8601)")

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        return from_dict(cls, data, "manifest")


def collect_manifest(suite_dict: dict, suite_file: str | Path, seed: int) -> Manifest:
    import torch

    import thunderdlm

    commit, dirty = git_state(Path(thunderdlm.__file__).resolve().parent)
    return Manifest(suite=suite_dict, suite_file=str(suite_file), seed=seed, git_commit=commit,
                    git_dirty=dirty, thunderdlm=thunderdlm.__version__, torch=torch.__version__,
                    python=platform.python_version(), hardware=collect_hardware(),
                    date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def git_state(where: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, tree has uncommitted changes) of the repository holding ``where``, or Nones."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (bool(status.strip()) if status is not None else None)


def collect_hardware() -> Hardware:
    import torch

    gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Hardware(cpu=cpu_model(), cpu_count=os.cpu_count() or 0, torch_threads=torch.get_num_threads(),
                    gpu=torch.cuda.get_device_name(0) if gpu_count else None, gpu_count=gpu_count,
                    machine=platform.machine(), system=platform.platform())


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo on Linux, sysctl on macOS, else platform)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass                      # no usable sysctl: fall back to what platform knows
    return platform.processor() or platform.machine()


__all__ = ["Manifest", "Hardware", "collect_manifest", "git_state", "cpu_model"]


def write_bench_json(res: dict, out: str | Path, where: Path) -> None:
    """A bench script's result with its provenance (torch, CPU, git commit of ``where``, date, the
    command line) added, written as JSON to ``out`` and printed."""
    import json
    import os
    import sys
    from datetime import datetime, timezone

    import torch

    commit, dirty = git_state(where)            # (None, None) without git, e.g. a bare GPU box
    res.update({"torch": torch.__version__, "machine": cpu_model(), "cpu_count": os.cpu_count(),
                "git_commit": commit, "git_dirty": dirty,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(["python", *sys.argv])})
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
