"""Discrete-state diffusion over tokens: masked (MDLM / LLaDA), uniform (UDLM / D3PM) and
score-entropy (SEDD), which share the keep-rate schedules (``schedules.py``), SEDD's forward
graphs (``graphs.py``) and the confidence commits of the uniform-noise samplers (``commit.py``)."""
from __future__ import annotations

from thunderdlm.processes.discrete.masked import MaskedConfig, MaskedProcess
from thunderdlm.processes.discrete.score_entropy import ScoreEntropyConfig, ScoreEntropyProcess
from thunderdlm.processes.discrete.uniform import UniformConfig, UniformProcess

__all__ = ["MaskedConfig", "MaskedProcess", "UniformConfig", "UniformProcess", "ScoreEntropyConfig",
           "ScoreEntropyProcess"]
