"""Processes, one file or one folder per method family, registered by name here (one line each).

``build_process(cfg, vocab_size)`` makes one."""
from __future__ import annotations

from thunderdlm.processes.autoregressive import AutoregressiveConfig, AutoregressiveProcess
from thunderdlm.processes.block import BlockConfig, BlockDiffusionProcess
from thunderdlm.processes.base import LossOutput, Process, SampleOptions, StepContext, StepOutput
from thunderdlm.processes.config import ProcessConfig
from thunderdlm.processes.discrete import (MaskedConfig, MaskedProcess, ScoreEntropyConfig,
                                           ScoreEntropyProcess, UniformConfig, UniformProcess)
from thunderdlm.processes.embedding import EmbeddingConfig, EmbeddingProcess
from thunderdlm.processes.forcing import ForcingConfig, ForcingProcess

PROCESSES: dict[str, type[Process]] = {
    MaskedProcess.name: MaskedProcess,
    AutoregressiveProcess.name: AutoregressiveProcess,
    EmbeddingProcess.name: EmbeddingProcess,
    UniformProcess.name: UniformProcess,
    ScoreEntropyProcess.name: ScoreEntropyProcess,
    ForcingProcess.name: ForcingProcess,
    BlockDiffusionProcess.name: BlockDiffusionProcess,
}


def build_process(cfg: ProcessConfig, vocab_size: int) -> Process:
    return PROCESSES[cfg.name](cfg, vocab_size)


__all__ = ["PROCESSES", "build_process", "Process", "ProcessConfig", "LossOutput", "SampleOptions",
           "StepContext", "StepOutput", "MaskedConfig", "MaskedProcess", "AutoregressiveConfig",
           "AutoregressiveProcess", "EmbeddingConfig", "EmbeddingProcess", "UniformConfig",
           "UniformProcess", "ScoreEntropyConfig", "ScoreEntropyProcess", "ForcingConfig",
           "ForcingProcess", "BlockConfig", "BlockDiffusionProcess"]
