"""Classifier-free guidance (LLaDA's "unsupervised CFG", SPEC.md §2.3) as a backbone wrapper.

LLaDA's ``generate.py`` runs the network on the canvas ``x`` and on ``un_x``, the same canvas with
every prompt position replaced by the mask token, in one doubled batch, and samples from

    ℓ = ℓ_u + (w + 1) · (ℓ_c − ℓ_u)          ℓ_c = f(x),  ℓ_u = f(un_x),  w = cfg_scale ≥ 0

(w = 0 gives the conditional logits; the logits are not renormalised, the draw's softmax does it).

:class:`Guided` is called exactly like the backbone it wraps (the same ``sigma``, ``attn_mask``,
``positions``, ``valid``, ``shift_logits`` keyword arguments), so a process's ``step`` needs no
change: the sampling loop hands it the wrapper instead of the network. Shapes: the wrapper knows
``known`` (B, L), True on the canvas positions to hide in the unconditional pass (the prompt or an
infill template's known text), and the process feeds it canvas columns from 0 (``x[:, :hi]``).

The unconditional input must mean "no prompt" to the network, which only a process with an
absorbing mask token provides (:func:`unconditional_token`): masked diffusion (LLaDA's case), block
diffusion (note: its network was trained with clean context blocks only, so a masked prompt block
is outside its training distribution — guidance still works as an extrapolation, but unlike
LLaDA's it is not the model's own unconditional) and SEDD with the absorbing graph. The others are
refused by name: an autoregressive network has no "unknown" token (its unconditional pass would
drop the prompt, a different sequence), uniform noise has none, and embedding diffusion and
diffusion forcing denoise continuous states.

KV caches: a cached forward feeds only the uncached columns, whose unconditional half would need
its own cache; the wrapper has ``supports_kv_cache = False``, so every process takes its exact,
uncached path (block diffusion's cache, masked diffusion's prefix / dual caches are bypassed).
"""
from __future__ import annotations

import torch
from torch import nn

from thunderdlm.errors import SamplingError

#: processes whose noise token is an absorbing mask ("this position is unknown")
MASK_PROCESSES = ("masked", "block", "score_entropy")


def unconditional_token(process) -> int:
    """The token that replaces the prompt in the unconditional pass: the process's mask token.
    A SamplingError naming cfg_scale for a process without one."""
    token = process.noise_token_id if process.name in MASK_PROCESSES else None
    if token is None:
        raise SamplingError(
            f"sampling argument 'cfg_scale' (--cfg-scale): classifier-free guidance replaces the "
            f"prompt by the mask token in an unconditional pass, and the {process.name!r} process "
            "has no mask token (masked, block and score_entropy with graph=absorb have one); use "
            "cfg_scale=0")
    return int(token)


class Guided(nn.Module):
    """``model`` under classifier-free guidance of scale ``scale`` with the positions ``known``
    (B, L) bool hidden behind ``null_id`` in the unconditional pass. ``scale == 0`` calls the
    model alone (bitwise the unguided logits)."""

    supports_kv_cache = False

    def __init__(self, model: nn.Module, known: torch.Tensor, null_id: int, scale: float):
        super().__init__()
        # named ``module`` like DDP's wrapper, so ``processes.base.unwrap`` (a process's own
        # attributes of the network, e.g. block diffusion's shifted head) sees the backbone
        self.module = model
        self.known, self.null_id, self.scale = known.bool(), int(null_id), float(scale)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if self.scale == 0.0:
            return self.module(x, sigma, **kwargs)
        if kwargs.get("kv_cache") is not None:
            raise SamplingError("classifier-free guidance runs without a KV cache (the wrapper "
                                "says supports_kv_cache = False)")
        B, L = x.shape
        if B != self.known.shape[0] or L > self.known.shape[1]:
            raise SamplingError(f"classifier-free guidance: input {tuple(x.shape)} does not fit the "
                                f"canvas {tuple(self.known.shape)} it was made for")
        un_x = x.masked_fill(self.known[:, :L].to(x.device), self.null_id)      # (B, L)
        both = torch.cat([x, un_x], dim=0)                                       # (2B, L)
        out = self.module(both, _twice("sigma", sigma), **{k: _twice(k, v) for k, v in kwargs.items()})
        cond, uncond = out.float().chunk(2, dim=0)                               # (B, L, V) each
        return uncond + (self.scale + 1.0) * (cond - uncond)


def _twice(name: str, value):
    """A per-row argument repeated for the unconditional half: sigma (B,) / (B, L), valid (B, K),
    per-row positions (B, L) of a padded batch, a (B, 1, L, K) attention mask. Shared as they are:
    None, a 0-dim sigma, an (L, K) or piecewise mask, positions (L,), flags."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    if (name in ("sigma", "valid") or (name == "positions" and value.dim() == 2)
            or (name == "attn_mask" and value.dim() == 4)):
        return torch.cat([value, value], dim=0)
    return value
