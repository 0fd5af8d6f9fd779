"""A thunderdlm autoregressive run folder as a judge (e.g. a long-trained char-level domain judge).

The run's own process supplies the scores: ``AutoregressiveProcess.logits(model, x)`` reads
BOS (= vocab_size) + x_<j causally and returns the next-token logits for every position of x, the
same computation as its exact NLL. One window holds at most the model's context (``seq_len``)
text tokens; longer texts are scored in windows (see ``judges/base.py``).

Characters outside the run's vocabulary: a char tokenizer has no <unk>, so such a text is
*rejected* with a JudgeError that names the text and the characters (a judge cannot assign a
probability to a symbol it cannot emit). A ``word`` tokenizer maps unknown words to <unk> and the
judge scores the <unk> token (as that tokenizer always does).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from thunderdlm.judges.base import Judge, JudgeError
from thunderdlm.loading import load_run
from thunderdlm.processes.autoregressive import AutoregressiveProcess


class RunJudge(Judge):
    """Judge backed by a trained autoregressive thunderdlm model."""

    def __init__(self, lm, name: str | None = None, stride: int | None = None):
        """``lm``: a loaded run (``loading.LoadedRun``, or the API's ``DiffusionLM`` built on one)."""
        if not isinstance(lm.process, AutoregressiveProcess):
            raise JudgeError(f"run '{lm.run_dir}' uses the {lm.cfg.process.name!r} process; a judge must be an "
                             "autoregressive run (process.name=autoregressive), whose likelihood is exact")
        self.lm, self.process, self.model = lm, lm.process, lm.model
        self.name = name or str(lm.run_dir)
        self.device = lm.device
        self.window = lm.context
        self.stride = stride or max(1, self.window // 2)

    def encode(self, text: str) -> list[int]:
        return self.lm.tokenizer.encode(text)

    def token_logprobs(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.process.logits(self.model, x)                       # (B, T, V) float32
        return F.log_softmax(logits, dim=-1).gather(-1, x.unsqueeze(-1)).squeeze(-1)   # (B, T)


def load_run_judge(path: Path, device: str = "cpu") -> RunJudge:
    """Load a run folder (``loading.load_run``, as ``thunderdlm.load`` does) and wrap it as a judge."""
    return RunJudge(load_run(path, device=device), name=str(path))
