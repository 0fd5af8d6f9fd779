"""The contract every process meets (masked, uniform, score-entropy, embedding, forcing, AR).

A *process* owns the math of one method: the forward (noising) process, the training loss, the
likelihood bound used for evaluation, the prior, and one reverse ``step``. It knows nothing about
optimisers, data loading or the sampling loop's strategies (blocks, prompts, callbacks): those live
in ``train/trainer.py`` and ``sampling/loop.py``, which only call the methods below.

Shapes: ``x0`` / ``x`` are token ids ``(B, L)``; a backbone maps ``(x, sigma)`` to logits
``(B, L, V)`` where ``V = process.model_vocab_size`` (the tokenizer's vocabulary plus any token the
process adds, such as the mask).

Padding: ``loss`` and ``nelbo`` take ``valid`` (B, L) bool, True on real tokens (windows of
different lengths right-padded into one batch). Padded positions are hidden from the network (the
backbone's key-padding mask, ``models/base.py``), contribute to no term, and every per-token figure
divides by the row's real tokens — so the bound of a padded window equals the unpadded one's.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class LossOutput:
    """What ``process.loss`` returns: the scalar to backpropagate and floats to log."""

    loss: torch.Tensor                                     # () scalar
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SampleOptions:
    """How a reverse step turns the model's prediction into tokens (per-step, not per-loop)."""

    temperature: float = 1.0       # 0 → greedy (argmax)
    top_k: int = 0                 # 0 → off
    top_p: float = 1.0             # 1 → off
    remasking: str = "ancestral"   # ancestral | low_confidence | random (masked-type processes)
    threshold: float | None = None  # Fast-dLLM: commit every position whose confidence exceeds τ,
                                    # at least one per step; a block runs until it is decided


@dataclass
class StepContext:
    """What the sampling loop hands to one ``process.step`` call.

    ``t`` > ``s`` are the current and next times in [0, 1] (``s = 0`` on a block's last step):
    floats, or per-row (B,) float64 tensors when the rows of a batch follow their own schedules
    (block diffusion's grid-aligned prompts of any length, ``sampling/loop.py``; only processes
    with a ``block_grid`` get tensors). ``draw_spans``: set by a step that draws per row, each
    row's own [a, b) within the step's span (None: the whole span; ``rng.draw_spans``).
    ``editable`` marks the positions this step may change (the current block's generated
    positions); every other position must come back unchanged. ``generator`` is one
    ``torch.Generator`` or per-row ``RowGenerators`` (``thunderdlm/rng.py``: steps draw through its
    helpers so that each row's draws are its own). ``valid`` / ``positions`` describe a left-padded
    batch (``forward_kwargs`` hands them to the backbone). ``n_commit`` is the number of
    positions per row to decide in this step when the loop asks for parallel decoding with a fixed
    schedule (LLaDA); ``None`` lets the process follow its own ancestral rule.
    """

    t: float | torch.Tensor                 # a float, or (B,) float64 per row (see above)
    s: float | torch.Tensor
    editable: torch.Tensor                  # (B, L) bool
    options: SampleOptions
    generator: torch.Generator | None = None
    n_commit: torch.Tensor | None = None    # (B,) long
    cache: dict[str, Any] = field(default_factory=dict)  # scratch space of one block (cleared per block)
    run_cache: dict[str, Any] = field(default_factory=dict)  # kept for the whole run (KV caches)
    nfe: int = 0                            # number of network evaluations so far (the step adds its own)
    pending: torch.Tensor | None = None     # (B, L) bool: generated positions of later blocks (still noise)
    valid: torch.Tensor | None = None       # (B, L) bool: real columns of a padded batch (None: all)
    positions: torch.Tensor | None = None   # (B, L) long: each row's own positions (None: 0..L−1)
    draw_spans: list[tuple[int, int]] | None = None  # per-row [a, b) of the step's span its draws cover

    def forward_kwargs(self, start: int = 0, end: int | None = None) -> dict:
        """The backbone's ``valid`` / ``positions`` for a forward of the canvas columns
        [start, end) whose keys are the columns [0, end) (those before ``start`` from a KV cache):
        ``valid[:, :end]`` and ``positions[:, start:end]``; nothing for an unpadded batch, so
        plain calls stay plain (``sampling/batched.py`` makes padded ones)."""
        out = {}
        if self.valid is not None:
            out["valid"] = self.valid[:, :end]
        if self.positions is not None:
            out["positions"] = self.positions[:, start:end]
        return out


@dataclass
class StepOutput:
    x: torch.Tensor            # (B, L) the next state
    x0_hat: torch.Tensor       # (B, L) the current guess of the clean tokens (for live display)


class Process(ABC):
    """Base class; subclasses register a config dataclass with a ``name`` field."""

    name: ClassVar[str]
    #: True when ``nelbo`` is the exact negative log-likelihood (AR), not an upper bound.
    exact_likelihood: ClassVar[bool] = False
    #: True when ``step`` implements ``SampleOptions.threshold`` (a mask shows what is undecided).
    supports_threshold: ClassVar[bool] = False
    #: The sampler decodes blocks on this grid ([b·g, (b+1)·g)) when set (block diffusion).
    block_grid: int | None = None
    #: True when ``step`` hands ``ctx.valid`` / ``ctx.positions`` to every network call and draws
    #: per row over the columns every row shares, so a left-padded batch of prompts of different
    #: lengths samples each row exactly as alone (``sampling/batched.py``; with a ``block_grid``
    #: on a canvas whose pads are whole blocks). False: only rows of equal prompt length are batched.
    pads_exactly: ClassVar[bool] = False

    def __init__(self, cfg: Any, vocab_size: int):
        self.cfg = cfg
        self.vocab_size = vocab_size          # the tokenizer's vocabulary size

    # ---- sizes -----------------------------------------------------------------------------------
    @property
    def model_vocab_size(self) -> int:
        """Output width the backbone must have."""
        return self.vocab_size

    @property
    def noise_token_id(self) -> int | None:
        """Id shown as 'not yet decided' by live displays (the mask id), if the process has one."""
        return None

    # ---- the network ---------------------------------------------------------------------------
    def build_network(self, model_cfg: Any, max_seq_len: int) -> nn.Module:
        """The trainable network this process trains and samples with.

        By default the backbone named by ``model_cfg`` with output width ``model_vocab_size``.
        A process whose network needs more than a backbone (embedding diffusion's bridge and
        latent head, diffusion forcing's embedding head) returns a module that owns the backbone
        and its extra parameters; trainer, checkpoints and the API only ever see this module.
        """
        from thunderdlm.models import build_model  # late import: models do not know processes

        return build_model(model_cfg, self.model_vocab_size, max_seq_len)

    # ---- training and likelihood ----------------------------------------------------------------
    @abstractmethod
    def loss(self, model: nn.Module, x0: torch.Tensor, valid: torch.Tensor | None = None) -> LossOutput:
        """Training loss on a batch of clean windows ``x0`` (B, L); ``valid`` (B, L) bool marks the
        real tokens (None: all)."""

    @abstractmethod
    def nelbo(self, model: nn.Module, x0: torch.Tensor,
              generator: torch.Generator | None = None,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        """One Monte Carlo sample per sequence of the NELBO in nats per real token: shape (B,).

        Its expectation upper-bounds the true NLL per token (equals it when ``exact_likelihood``).
        ``valid`` (B, L) bool marks the real tokens (None: all); padding changes nothing else.
        """

    # ---- sampling --------------------------------------------------------------------------------
    @abstractmethod
    def prior(self, shape: tuple[int, int], device: torch.device,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Tokens at t = 1 for positions to be generated: (B, L) long."""

    @abstractmethod
    def step(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> StepOutput:
        """One reverse step from time ``ctx.t`` to ``ctx.s`` on the editable positions."""

    def finalize(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Noise removal after the last step (default: nothing left to do)."""
        return x

    def is_noisy(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: positions still carrying noise (used for n_commit schedules)."""
        return torch.ones_like(x, dtype=torch.bool)


def check_valid(x0: torch.Tensor, valid: torch.Tensor | None) -> None:
    """``valid`` must be None or a (B, L) bool mask of x0's shape with a real token in every row."""
    if valid is None:
        return
    if valid.dtype != torch.bool or valid.shape != x0.shape:
        raise ValueError(f"valid must be a {tuple(x0.shape)} bool mask (True on real tokens), got "
                         f"{valid.dtype} {tuple(valid.shape)}")
    if not bool(valid.any(dim=1).all()):
        raise ValueError("valid: every window needs at least one real (True) token")


def pad_kwargs(valid: torch.Tensor | None) -> dict:
    """The backbone's key-padding argument, only when there is padding (plain calls stay plain)."""
    return {} if valid is None else {"valid": valid}


def real_mean(per_pos: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Per-sequence mean over the real positions: (B, L) -> (B,); the plain mean when no padding."""
    if valid is None:
        return per_pos.mean(dim=1)
    v = valid.to(per_pos.dtype)
    return (per_pos * v).sum(dim=1) / v.sum(dim=1)


def config_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers.

    A process calls the wrapped model for the forward pass (DDP must see it to synchronise the
    gradients) and the unwrapped one for its own methods (``clean_latents``, ``latents`` ...)."""
    while True:
        inner = model.__dict__.get("_modules", {}).get("module") or getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            return model
        model = inner
