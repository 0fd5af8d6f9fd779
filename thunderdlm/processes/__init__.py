"""Processes: one file each, registered by name. ``build_process(cfg, vocab_size)`` makes one."""
from __future__ import annotations

from thunderdlm.processes.autoregressive import AutoregressiveConfig, AutoregressiveProcess
from thunderdlm.processes.base import LossOutput, Process, SampleOptions, StepContext, StepOutput
from thunderdlm.processes.config import ProcessConfig
from thunderdlm.processes.embedding import EmbeddingConfig, EmbeddingProcess
from thunderdlm.processes.forcing import ForcingConfig, ForcingProcess
from thunderdlm.processes.masked import MaskedConfig, MaskedProcess
from thunderdlm.processes.score_entropy import ScoreEntropyConfig, ScoreEntropyProcess
from thunderdlm.processes.uniform import UniformConfig, UniformProcess

PROCESSES: dict[str, type[Process]] = {
    MaskedProcess.name: MaskedProcess,
    AutoregressiveProcess.name: AutoregressiveProcess,
    EmbeddingProcess.name: EmbeddingProcess,
    UniformProcess.name: UniformProcess,
    ScoreEntropyProcess.name: ScoreEntropyProcess,
    ForcingProcess.name: ForcingProcess,
}


def build_process(cfg: ProcessConfig, vocab_size: int) -> Process:
    return PROCESSES[cfg.name](cfg, vocab_size)


__all__ = ["PROCESSES", "build_process", "Process", "ProcessConfig", "LossOutput", "SampleOptions",
           "StepContext", "StepOutput", "MaskedConfig", "MaskedProcess", "AutoregressiveConfig",
           "AutoregressiveProcess", "EmbeddingConfig", "EmbeddingProcess", "UniformConfig",
           "UniformProcess", "ScoreEntropyConfig", "ScoreEntropyProcess", "ForcingConfig",
           "ForcingProcess"]
