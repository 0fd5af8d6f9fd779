"""The polymorphic ``process`` config section: ``process.name`` picks the concrete dataclass."""
from __future__ import annotations

from dataclasses import dataclass

from thunderdlm.config import param


@dataclass
class ProcessConfig:
    """Base of every process config; ``name`` selects the variant (see ``PROCESSES``)."""

    name: str = param("masked", help="which process: masked | autoregressive | uniform | score_entropy "
                                     "| ... (all of them: thunderdlm.processes.PROCESSES)")
    default_variant = "masked"

    @classmethod
    def variants(cls) -> dict[str, type]:
        from thunderdlm.processes import PROCESSES  # late import: the registry imports the variants

        return {name: proc.config_cls for name, proc in PROCESSES.items()}
