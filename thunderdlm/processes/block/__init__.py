"""Block diffusion (BD3-LM): the process and its attention patterns."""
from thunderdlm.processes.block.process import BlockConfig, BlockDiffusionProcess

__all__ = ["BlockConfig", "BlockDiffusionProcess"]
