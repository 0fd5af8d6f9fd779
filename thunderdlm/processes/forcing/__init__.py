"""Diffusion Forcing for text (note 004): the process (``process.py``), its causal network
(``network.py``), the Gaussian core (``diffusion.py``), β schedules and scheduling matrices
(``schedules.py``) and the sliding-window sampler (``sampler.py``)."""
from __future__ import annotations

from thunderdlm.processes.forcing.process import ForcingConfig, ForcingProcess

__all__ = ["ForcingConfig", "ForcingProcess"]
