"""A ``Job``: one prompt of one request, ``n`` rows to decode with fixed settings.

A request becomes one job per prompt (``prompt`` may be a list). Jobs whose ``key`` is equal are
decoded together in one sampling batch (``scheduler.py``): same settings, and for a continuation
the same exactness group of the padded sampler (``group``: ``sampling.batched.batch_key`` of the
prompt length — any length for masked and block diffusion);
seeded or not, a continuation's tokens never depend on its batch mates (``batch.py``). An infill
job needs the same infill layout, and a seeded one has a key of its own and is decoded alone, with
a generator seeded by it. Either way a seeded job's tokens are those of ``thunderdlm.load(RUN)
.sample(...)`` with the same arguments.

The worker thread reports to the request's asyncio task through ``emit`` (thread-safe); the task
reads ``events``: ``("delta", (row, text))``, ``("state", (row, payload))``, ``("done", JobResult)``
or ``("error", exception)``.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field

_unique = itertools.count()


@dataclass(frozen=True)
class Settings:
    """What must be equal for rows to share a sampling batch (besides the canvas layout)."""
    max_tokens: int
    steps: int
    temperature: float
    top_p: float
    remasking: str
    block_length: int | None
    threshold: float | None
    stop: tuple[str, ...]
    top_k: int = 0
    cfg_scale: float = 0.0


@dataclass
class RowResult:
    text: str
    finish_reason: str          # "stop" (EOS or a stop string) | "length"
    completion_tokens: int


@dataclass
class JobResult:
    rows: list[RowResult]
    nfe: int                    # network evaluations of the batch this job ran in
    steps: int
    batch_rows: int             # rows decoded together (this job's and its batch-mates')
    tokens_per_call: float
    seconds: float


@dataclass(eq=False)
class Job:
    settings: Settings
    prompt_ids: list[int]                       # continuation: the prompt; infill: the whole canvas
    editable: list[bool] | None                 # infill layout (None: continue prompt_ids)
    n: int
    seed: int | None
    prompt_text: str = ""
    group: tuple = ()                           # continuation: the padded sampler's batch_key
    stream: bool = False                        # text deltas as tokens are committed
    states: bool = False                        # the whole canvas after every step
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        if self.editable is not None:
            layout, alone = ("infill", tuple(self.editable)), self.seed is not None
        else:
            layout, alone = ("continue", self.group), False
        self.key = (layout, self.settings, next(_unique) if alone else None)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.events = loop, asyncio.Queue()

    def emit(self, kind: str, payload) -> None:
        """Thread-safe: hand an event to the request's task (dropped once cancelled)."""
        if self.loop is None or self.cancelled.is_set():
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:          # the event loop has closed (server shutting down)
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()
