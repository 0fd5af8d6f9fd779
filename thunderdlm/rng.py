"""Per-row random generators: a row's draws that do not depend on what it is batched with.

A sampling run draws its noise (categorical exponentials, commit coins, priors, Gaussian noise)
from one ``torch.Generator``. Drawn as one ``(B, ...)`` tensor, row i's numbers are the i-th slice
of one stream, so they depend on B, on the rows before it and on the shapes they asked for: a
request's tokens would change with its batch mates. :class:`RowGenerators` holds one generator
per row; every draw helper below then draws row by row, ``shape[1:]`` from the row's own stream,
so row i consumes exactly what it would consume sampled alone (a B = 1 draw of ``(1, *rest)`` from
a plain generator reads the same numbers as a ``rest``-shaped draw: bitwise the same values).

Every helper also accepts a plain ``torch.Generator`` (or None) and then makes the one batched call
it replaces — today's behaviour, bit for bit, for every caller that does not batch requests.

``rows(generator, active)`` narrows the generators to the rows that draw in this step (a row with
nothing to decide draws nothing, as it would alone); with a plain generator it returns it as is.
``draw_spans`` narrows each row's draw to its own columns of a step's span (rows whose editable
columns differ: block diffusion's grid-aligned prompts of any lengths).

This module sits below the processes and the sampling loop and imports nothing from thunderdlm.
``categorical.sample_categorical`` calls :meth:`RowGenerators.rand` by duck typing.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence, Union

import torch

Generatorish = Union[torch.Generator, "RowGenerators", None]


def row_seed(seed: int, row: int) -> int:
    """The seed of sample ``row`` of a request seeded ``seed``: ``seed`` itself for row 0 (so one
    sample equals today's single-generator run with that seed), and for row j ≥ 1 a 63-bit hash of
    (seed, j) (distinct streams; ``seed + j`` would collide with the request seeded ``seed + j``)."""
    if row == 0:
        return seed
    digest = hashlib.blake2b(f"thunderdlm-row:{seed}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class RowGenerators:
    """One ``torch.Generator`` per row of a batch (all on one device)."""

    def __init__(self, generators: Sequence[torch.Generator]):
        if not generators:
            raise ValueError("RowGenerators needs at least one generator")
        self.generators = list(generators)
        self.device = self.generators[0].device

    @classmethod
    def seeded(cls, seeds: Sequence[int | None], device: torch.device | str = "cpu") -> RowGenerators:
        """One generator per seed; None draws a fresh nondeterministic seed for that row."""
        gens = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(s if s is not None else torch.seed() % 2**63)
            gens.append(g)
        return cls(gens)

    def __len__(self) -> int:
        return len(self.generators)

    def select(self, rows: torch.Tensor | Sequence[int]) -> RowGenerators:
        """The generators of ``rows`` (bool (B,) mask or indices), sharing their state."""
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            rows = rows.nonzero().flatten().tolist()
        elif isinstance(rows, torch.Tensor):
            rows = rows.tolist()
        return RowGenerators([self.generators[i] for i in rows])

    def _stack(self, shape: Sequence[int], draw: Callable[[tuple, torch.Generator], torch.Tensor]
               ) -> torch.Tensor:
        shape = tuple(shape)
        if not shape or shape[0] != len(self.generators):
            raise ValueError(f"a per-row draw of shape {shape} needs its first dimension to be the "
                             f"{len(self.generators)} rows")
        return torch.stack([draw(shape[1:], g) for g in self.generators])

    def rand(self, shape, *, device=None, dtype=None) -> torch.Tensor:
        return self._stack(shape, lambda s, g: torch.rand(s, generator=g, device=device, dtype=dtype))

    def randn(self, shape, *, device=None, dtype=None) -> torch.Tensor:
        return self._stack(shape, lambda s, g: torch.randn(s, generator=g, device=device, dtype=dtype))

    def randint(self, low: int, high: int, shape, *, device=None, dtype=torch.long) -> torch.Tensor:
        return self._stack(shape, lambda s, g: torch.randint(low, high, s, generator=g, device=device,
                                                             dtype=dtype))

    def __repr__(self) -> str:
        return f"RowGenerators({len(self.generators)} rows, device={self.device})"


def rows(generator: Generatorish, active: torch.Tensor) -> Generatorish:
    """The generators of the ``active`` (B,) rows; a plain generator (or None) unchanged."""
    return generator.select(active) if isinstance(generator, RowGenerators) else generator


def per_row(generator: Generatorish) -> bool:
    return isinstance(generator, RowGenerators)


def rand(shape, generator: Generatorish = None, *, device=None, dtype=None) -> torch.Tensor:
    """``torch.rand(shape)``; per row from ``shape[1:]`` with :class:`RowGenerators`."""
    if isinstance(generator, RowGenerators):
        return generator.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def randn(shape, generator: Generatorish = None, *, device=None, dtype=None) -> torch.Tensor:
    """``torch.randn(shape)``; per row with :class:`RowGenerators`."""
    if isinstance(generator, RowGenerators):
        return generator.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def randint(low: int, high: int, shape, generator: Generatorish = None, *, device=None,
            dtype=torch.long) -> torch.Tensor:
    """``torch.randint(low, high, shape)``; per row with :class:`RowGenerators`."""
    if isinstance(generator, RowGenerators):
        return generator.randint(low, high, shape, device=device, dtype=dtype)
    return torch.randint(low, high, shape, generator=generator, device=device, dtype=dtype)



def draw_rows(generator: Generatorish, active: torch.Tensor,
              draw: Callable[[Generatorish, torch.Tensor | slice], torch.Tensor],
              rest: torch.Tensor) -> torch.Tensor:
    """``draw(g, rows)`` for the rows that draw in this step, ``rest`` (B, ...) for the others.

    ``draw`` gets the generator(s) and an index of dim 0 and returns those rows' draws. With a plain
    generator (or None) every row draws in one call (``rows`` = all, today's draw order); with
    :class:`RowGenerators` only the ``active`` (B,) rows draw, each from its own stream — a row
    with nothing to decide consumes nothing, as it would sampled alone."""
    if not isinstance(generator, RowGenerators) or bool(active.all()):
        return draw(generator, slice(None))
    out = rest.clone()
    if active.any():
        out[active] = draw(generator.select(active), active)
    return out


def draw_spans(generator: Generatorish, active: torch.Tensor,
               spans: Sequence[tuple[int, int]] | None,
               draw: Callable[[Generatorish, slice, slice], torch.Tensor],
               rest: torch.Tensor) -> torch.Tensor:
    """``draw_rows`` where row i draws over its own columns ``spans[i]`` = [a, b) of dim 1 only.

    A step works on the union span of its rows; a row sampled alone works on its own span, which
    in a batch of rows with different editable columns (block diffusion's grid-aligned prompts,
    ``sampling/batched.py``) may be narrower. ``draw(g, rows, cols)`` returns the draws (1, b − a,
    ...) of ``rest[rows, cols]``; each active row draws exactly the numbers its alone run draws.
    ``spans`` None (or a plain generator): ``draw_rows`` over the whole span."""
    if spans is None or not isinstance(generator, RowGenerators):
        return draw_rows(generator, active, lambda g, r: draw(g, r, slice(None)), rest)
    out = rest.clone()
    for i in active.nonzero().flatten().tolist():
        a, b = spans[i]
        out[i:i + 1, a:b] = draw(generator.select([i]), slice(i, i + 1), slice(a, b))
    return out
