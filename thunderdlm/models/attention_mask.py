"""``PiecewiseMask``: a structured attention pattern run as a few dense pieces instead of one mask.

A boolean ``(Lq, Lk)`` mask makes ``scaled_dot_product_attention`` compute every score and throw
most of them away. Block diffusion's ``x_t ⊕ x0`` pattern (``processes/block/attention.py``) keeps
about a third of them, and on a CPU (no block-sparse kernel) the dense mask made the attention of a
training step 4× that of an L-long forward. A ``PiecewiseMask`` lists pieces that cover the queries
once, in order::

    piece = (q: slice of query positions,
             keys: [slice, ...] of key positions, concatenated in this order,
             mask: (len(q), Σ len(keys)) bool, True = may attend)

and attention runs one SDPA call per piece over only the keys it lists, then concatenates the
outputs: the same result as the dense mask (tested), with fewer scores. ``dense()`` rebuilds the
full boolean mask (for backbones that need one tensor, and for tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PiecewiseMask:
    """Pieces (query slice, key slices, bool mask) covering queries 0..n_q−1 in order."""

    n_q: int
    n_k: int
    pieces: list[tuple[slice, list[slice], torch.Tensor]]

    def __post_init__(self) -> None:
        at = 0
        for q, keys, m in self.pieces:
            width = sum(k.stop - k.start for k in keys)
            if q.start != at or m.shape != (q.stop - q.start, width) or m.dtype != torch.bool:
                raise ValueError(f"piece {q} does not continue the queries at {at} or its mask "
                                 f"{tuple(m.shape)} is not ({q.stop - q.start}, {width}) bool")
            at = q.stop
        if at != self.n_q:
            raise ValueError(f"the pieces cover queries 0..{at - 1}, not 0..{self.n_q - 1}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_q, self.n_k)

    def to(self, device: torch.device) -> PiecewiseMask:
        return PiecewiseMask(self.n_q, self.n_k, [(q, k, m.to(device)) for q, k, m in self.pieces])

    def dense(self) -> torch.Tensor:
        """The equivalent (n_q, n_k) boolean mask."""
        device = self.pieces[0][2].device if self.pieces else None
        full = torch.zeros(self.n_q, self.n_k, dtype=torch.bool, device=device)
        for q, keys, m in self.pieces:
            idx = torch.cat([torch.arange(k.start, k.stop, device=device) for k in keys])
            rows = torch.zeros(q.stop - q.start, self.n_k, dtype=torch.bool, device=device)
            rows[:, idx] = m
            full[q] = rows
        return full

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               dropout_p: float = 0.0) -> torch.Tensor:
        """SDPA piece by piece: q (B, H, n_q, Dh), k / v (B, H, n_k, Dh) -> (B, H, n_q, Dh)."""
        out = []
        for qs, keys, m in self.pieces:
            ks = k[:, :, keys[0]] if len(keys) == 1 else torch.cat([k[:, :, s] for s in keys], 2)
            vs = v[:, :, keys[0]] if len(keys) == 1 else torch.cat([v[:, :, s] for s in keys], 2)
            out.append(F.scaled_dot_product_attention(q[:, :, qs], ks, vs, attn_mask=m,
                                                      dropout_p=dropout_p))
        return torch.cat(out, dim=2)
