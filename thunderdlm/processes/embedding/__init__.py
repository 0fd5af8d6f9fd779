"""Continuous embedding diffusion (Diffusion-LM / Plaid; notes 000 / 001): the process
(``process.py``), its network with the embedding bridge (``network.py``), the Gaussian noise
schedules (``schedules.py``) and importance sampling of t (``time_importance.py``)."""
from __future__ import annotations

from thunderdlm.processes.embedding.process import EmbeddingConfig, EmbeddingProcess

__all__ = ["EmbeddingConfig", "EmbeddingProcess"]
