"""thunderdlm: diffusion language models on one trainer, with a fair autoregressive baseline.

    import thunderdlm
    lm = thunderdlm.load("runs/shakespeare_char")
    lm.generate(length=256, steps=64)
    lm.nll(["To be, or not to be, that is the question"])
"""
from __future__ import annotations

__version__ = "0.1.0"


def load(run, checkpoint=None, device="auto", ema=True, overrides=None):
    """Load a trained run folder as a :class:`thunderdlm.api.DiffusionLM`."""
    from thunderdlm.api import load as _load

    return _load(run, checkpoint=checkpoint, device=device, ema=ema, overrides=overrides)


__all__ = ["load", "__version__"]
