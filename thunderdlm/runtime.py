"""Process-wide runtime settings shared by every entry point (CLI, API, trainer, benchmarks).

CPU pitfalls measured on the reference machine (DESIGN.md §5):
- zero-initialised layers under AdamW produce denormal floats that slowed a CPU step 10-20x, so
  denormals are flushed;
- when several processes share the two cores (DDP ranks, parallel tests) each must use one torch
  thread, or small forwards get ~25x slower.
"""
from __future__ import annotations

import os

import torch


def setup_runtime(threads: int | None = None) -> None:
    """Flush denormals and pick a sane thread count (``threads`` None: ``default_threads()``;
    0: leave the thread count alone). Safe to call more than once. Entry points (the CLI, the
    trainer, the bench scripts) call it; a library call such as ``thunderdlm.load()`` flushes
    denormals only and never changes the caller's thread count."""
    torch.set_flush_denormal(True)
    if threads is None:
        threads = default_threads()
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def default_threads() -> int:
    """Cores per process: all cores for one process, split evenly under torchrun."""
    env = os.environ.get("THUNDERDLM_THREADS")
    if env:
        return max(1, int(env))
    cores = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, cores // max(1, local_world))


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; a device this machine lacks is a ConfigError."""
    from thunderdlm.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {name!r} is not a device name (auto | cpu | cuda | cuda:N): {e}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA device(s); "
                              "use device=auto or cpu (train.device=, --device)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available here; use device=auto or cpu")
    return device
