"""Autoregressive teacher forcing: the baseline every diffusion process is measured against.

Notation: x0 = (x_1..x_L) a clean window; BOS = ``vocab_size`` (one extra embedding row, never a
target). The network reads the window shifted right by one behind BOS, with causal attention, and
predicts every position:

    −log p_θ(x0) = Σ_i −log p_θ(x_i | BOS, x_<i)        (exact; reported per token)

so the first token of a window is scored too (unconditionally), and the per-token NLL models the
same joint distribution of L tokens as the diffusion bounds do — the comparison is like for like.

Sampling through the generic loop: undecided positions hold BOS (a placeholder the causal network
never reads to the left of the position it predicts); each network evaluation decides the leftmost
undecided editable position of every row from its left context. A step decodes ``n_commit``
positions, or its share (t − s)/t of what is left, so a block is complete at its last step.
Known text to the right of a gap is ignored (AR cannot condition on it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.config import param
from thunderdlm.processes.base import LossOutput, Process, StepContext, StepOutput
from thunderdlm.processes.config import ProcessConfig
from thunderdlm.sampling.categorical import draw_tokens


@dataclass
class AutoregressiveConfig(ProcessConfig):
    name: str = param("autoregressive", help="autoregressive teacher forcing (exact likelihood)")


class AutoregressiveProcess(Process):
    name = "autoregressive"
    config_cls = AutoregressiveConfig
    exact_likelihood = True

    def __init__(self, cfg: AutoregressiveConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.bos_id = vocab_size

    @property
    def model_vocab_size(self) -> int:
        return self.vocab_size + 1

    @property
    def noise_token_id(self) -> int:
        return self.bos_id

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, L, V) next-token logits for every position of x, BOS excluded from the outputs."""
        inp = torch.cat([torch.full_like(x[:, :1], self.bos_id), x[:, :-1]], dim=1)   # shift right
        out = model(inp, None, causal=True).float()
        return out[..., : self.vocab_size]

    def nelbo(self, model: nn.Module, x0: torch.Tensor, generator=None) -> torch.Tensor:
        """Exact NLL per token of each window: (B,)."""
        logits = self.logits(model, x0)
        return F.cross_entropy(logits.transpose(1, 2), x0, reduction="none").mean(dim=1)

    def loss(self, model: nn.Module, x0: torch.Tensor) -> LossOutput:
        loss = self.nelbo(model, x0).mean()
        return LossOutput(loss, {})

    # ---- sampling --------------------------------------------------------------------------------
    def prior(self, shape, device, generator=None) -> torch.Tensor:
        return torch.full(shape, self.bos_id, dtype=torch.long, device=device)

    def is_noisy(self, x: torch.Tensor) -> torch.Tensor:
        return x == self.bos_id

    def step(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> StepOutput:
        todo = (x == self.bos_id) & ctx.editable
        left = int(todo.sum(dim=1).max())
        if left == 0:
            return StepOutput(x, x)
        if ctx.n_commit is not None:
            k = int(ctx.n_commit.max())
        else:
            k = left if ctx.s <= 0 else math.ceil(left * (ctx.t - ctx.s) / ctx.t)
        x = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)
        for _ in range(min(k, left)):
            todo = (x == self.bos_id) & ctx.editable
            active = todo.any(dim=1)
            if not active.any():
                break
            pos = todo.float().argmax(dim=1)                               # leftmost undecided, (B,)
            logits = self.logits(model, x)[rows, pos]                      # (B, V)
            ctx.nfe += 1
            opts = ctx.options
            tok = draw_tokens(logits, opts.temperature, opts.top_k, opts.top_p, ctx.generator)
            x[rows[active], pos[active]] = tok[active]
        return StepOutput(x, x)

    def finalize(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Decode whatever is still undecided (the loop's last step normally leaves nothing)."""
        while ((x == self.bos_id) & ctx.editable).any():
            ctx.t, ctx.s, ctx.n_commit = 1.0, 0.0, None
            x = self.step(model, x, ctx).x
        return x
