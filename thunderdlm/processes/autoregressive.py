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

KV cache (``process.kv_cache``, on by default, for backbones with ``supports_kv_cache``): the
network input of a row is ``inp = [BOS, x_0, .., x_{L-2}]`` and the logits at position p depend on
``inp[0..p]`` only, so keys and values of a prefix stay valid while that prefix is unchanged. The
step keeps a ``KVCache`` and the input it was fed in ``ctx.cache``; before each evaluation it rolls
the cache back to the longest prefix on which the cached input still equals the current one (all
rows), then feeds ``inp[start : max(pos) + 1]`` as one chunk. In a plain generation that is the
prompt once, then one token per evaluation, and a known infill span together with the token after
it: O(L) token positions for a whole sample instead of O(L²). Rows at different cursors or edits
at cached positions only roll the cache back further, so the result equals the recompute path
(up to float rounding, far below what changes a draw); the same ``draw_tokens`` call consumes the
random generator identically on both paths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.config import param
from thunderdlm.models.kv_cache import KVCache
from thunderdlm.processes.base import (LossOutput, Process, StepContext, StepOutput, check_valid,
                                        pad_kwargs, real_mean)
from thunderdlm.processes.config import ProcessConfig
from thunderdlm.categorical import draw_tokens
from thunderdlm import rng


@dataclass
class AutoregressiveConfig(ProcessConfig):
    name: str = param("autoregressive", help="autoregressive teacher forcing (exact likelihood)")
    kv_cache: bool = param(True, help="sample with a key/value cache: O(L) token positions per "
                                      "sample instead of O(L^2); false recomputes the full causal "
                                      "forward for every token (same tokens, slower)")


class AutoregressiveProcess(Process):
    name = "autoregressive"
    config_cls = AutoregressiveConfig
    exact_likelihood = True
    pads_exactly = True

    def __init__(self, cfg: AutoregressiveConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.bos_id = vocab_size

    @property
    def model_vocab_size(self) -> int:
        return self.vocab_size + 1

    @property
    def noise_token_id(self) -> int:
        return self.bos_id

    def network_input(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x shifted right behind BOS: (B, L) -> (B, L), ``inp[:, p]`` predicts ``x[:, p]``.
        With ``valid`` (B, L) a row's BOS sits at its first real column (column 0 unless the row
        is left-padded: ``sampling/batched.py``)."""
        inp = torch.cat([torch.full_like(x[:, :1], self.bos_id), x[:, :-1]], dim=1)
        if valid is not None:
            inp = inp.scatter(1, valid.int().argmax(dim=1, keepdim=True), self.bos_id)
        return inp

    @staticmethod
    def input_valid(valid: torch.Tensor) -> torch.Tensor:
        """(B, L) real columns of ``network_input(x, valid)``: the BOS at a row's first real
        column f, then column c > f when x[c − 1] is real (right padding: [True, valid[:, :-1]];
        left padding: ``valid`` itself)."""
        first = valid.int().argmax(dim=1, keepdim=True)                            # (B, 1)
        cols = torch.arange(valid.shape[1], device=valid.device)[None, :]
        prev = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1)
        return (cols == first) | prev

    def logits(self, model: nn.Module, x: torch.Tensor, valid: torch.Tensor | None = None,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, V) next-token logits for every position of x, BOS excluded from the outputs.
        ``valid`` (B, L) marks x's real tokens (input p holds x[p − 1], the BOS at a row's first
        real column); ``positions`` (B, L): each row's own, for a left-padded batch."""
        keys = None if valid is None else self.input_valid(valid)
        extra = {} if positions is None else {"positions": positions}
        out = model(self.network_input(x, valid), None, causal=True, **pad_kwargs(keys), **extra).float()
        return out[..., : self.vocab_size]

    def nelbo(self, model: nn.Module, x0: torch.Tensor, generator=None,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        """Exact NLL per real token of each window: (B,)."""
        check_valid(x0, valid)
        logits = self.logits(model, x0, valid)
        return real_mean(F.cross_entropy(logits.transpose(1, 2), x0, reduction="none"), valid)

    def loss(self, model: nn.Module, x0: torch.Tensor, valid: torch.Tensor | None = None) -> LossOutput:
        loss = self.nelbo(model, x0, valid=valid).mean()
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
            if self.cfg.kv_cache and getattr(model, "supports_kv_cache", False):
                logits = self._cached_logits(model, x, pos, active, ctx)    # (B, V)
            else:
                logits = self.logits(model, x, ctx.valid, ctx.positions)[rows, pos]   # (B, V)
            ctx.nfe += 1
            opts = ctx.options
            tok = rng.draw_rows(ctx.generator, active, lambda g, r: draw_tokens(
                logits[r], opts.temperature, opts.top_k, opts.top_p, g), pos)      # (B,)
            x[rows[active], pos[active]] = tok[active]
        return StepOutput(x, x)

    def _cached_logits(self, model: nn.Module, x: torch.Tensor, pos: torch.Tensor,
                       active: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Next-token logits (B, V) at ``pos`` (B,), feeding the network only uncached positions.

        Rows that are not ``active`` get logits for some position (they are drawn and discarded,
        as on the recompute path).
        """
        inp = self.network_input(x, ctx.valid)                             # (B, L)
        cache: KVCache | None = ctx.cache.get("ar_kv")
        fed: torch.Tensor | None = ctx.cache.get("ar_fed")                 # (B, P) inputs cached
        if cache is None or fed is None or fed.shape[0] != x.shape[0]:
            cache, fed = model.new_kv_cache(x.shape[1]), inp[:, :0]
        P = fed.shape[1]
        same = (fed == inp[:, :P]).all(dim=0)                              # (P,) column unchanged
        valid = P if bool(same.all()) else int((~same).int().argmax())     # longest equal prefix
        start = min(valid, int(pos[active].min()))
        end = int(pos[active].max()) + 1                                   # feed inp[start:end]
        cache.crop(start)
        pads = {}
        if ctx.valid is not None:            # a left-padded batch: the input's real keys 0..end−1
            pads["valid"] = self.input_valid(ctx.valid)[:, :end]
        if ctx.positions is not None:
            pads["positions"] = ctx.positions[:, start:end]
        out = model(inp[:, start:end], None, causal=True, kv_cache=cache, **pads)  # (B, end − start, V)
        ctx.cache["ar_kv"], ctx.cache["ar_fed"] = cache, inp[:, :end].clone()
        idx = (pos - start).clamp(0, end - start - 1)                      # (B,)
        rows = torch.arange(x.shape[0], device=x.device)
        return out[rows, idx, : self.vocab_size].float()

    def finalize(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Decode whatever is still undecided (the loop's last step normally leaves nothing)."""
        while ((x == self.bos_id) & ctx.editable).any():
            ctx.t, ctx.s, ctx.n_commit = 1.0, 0.0, None
            x = self.step(model, x, ctx).x
        return x
