"""One worker thread per model: a queue of jobs, taken in arrival order, batched by key.

The worker takes the oldest job and every queued job with the same ``Job.key`` (same settings,
the same exactness group of the padded sampler — prompts of other lengths included —, or the same
infill layout) up to ``max_batch_rows`` rows, and decodes them in one sampling batch
(``batch.run_batch``). A batch starts ``batch_wait_ms`` after its first job arrived and after the
previous batch ended (the window lets concurrent requests meet); after a batch it also waits, for
at most a quarter of a batch's duration, until as many rows are queued as were running or waiting
when that batch ended: the clients just answered send their next requests, and clients in
lock-step keep meeting in one batch instead of settling into alternating half-size ones. While a
batch runs, new requests queue up. Jobs cancelled while
queued are dropped without running. ``submit`` refuses work past ``max_queue`` waiting jobs with
``QueueFull`` (answered 429 with Retry-After).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque

from thunderdlm.errors import ThunderError
from thunderdlm.serve.batch import Cancelled, run_batch
from thunderdlm.serve.jobs import Job


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after = retry_after


class Scheduler:
    def __init__(self, name: str, lm, max_queue: int, max_batch_rows: int, batch_wait_ms: float,
                 on_batch=None):
        self.name, self.lm = name, lm
        self.max_queue, self.max_rows, self.wait = max_queue, max_batch_rows, batch_wait_ms / 1000
        self.on_batch = on_batch      # metrics hook: (model, rows, seconds, error, tokens, nfe)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._batch_seconds = 1.0                 # running mean, for Retry-After
        self._last_end = 0.0                      # when the last batch finished (monotonic)
        self._expect = 1                          # rows running or waiting when it finished
        self.patience = 0.25                      # wait at most this share of a batch for them
        self._thread = threading.Thread(target=self._loop, name=f"serve-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, jobs: list[Job]) -> None:
        with self._cond:
            if self._closed:
                raise QueueFull(1)
            if len(self._queue) + len(jobs) > self.max_queue:
                raise QueueFull(self.retry_after())
            self._queue.extend(jobs)
            self._cond.notify()

    def retry_after(self) -> int:
        batches = len(self._queue) / self.max_rows + 1
        return max(1, math.ceil(self._batch_seconds * batches))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._queue:
                job.cancel()
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            earliest = max(self._queue[0].enqueued if self._queue else 0.0, self._last_end) + self.wait
            latest = self._last_end + self.wait + self.patience * self._batch_seconds
            while not self._closed:
                now = time.monotonic()
                rows = sum(j.n for j in self._queue)
                if now >= earliest and (rows >= self._expect or now >= latest):
                    break
                self._cond.wait((latest if now >= earliest else earliest) - now)
            if self._closed:
                return None
            batch, rows, key = [], 0, None
            for job in list(self._queue):
                if job.cancelled.is_set():
                    self._queue.remove(job)
                    continue
                if key is None:
                    key = job.key
                if job.key == key and (not batch or rows + job.n <= self.max_rows):
                    self._queue.remove(job)
                    batch.append(job)
                    rows += job.n
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            t0, error, tokens, nfe = time.perf_counter(), None, 0, 0
            try:
                tokens, nfe = run_batch(self.lm, batch)
            except Cancelled:
                error = "cancelled"
            except ThunderError as e:             # a request the sampler refused (400)
                error = "refused"
                for job in batch:
                    job.emit("error", e)
            except Exception as e:                # a server bug: reported as 500, the worker goes on
                error = "failed"
                for job in batch:
                    job.emit("error", e)
            seconds = time.perf_counter() - t0
            with self._cond:
                self._last_end = time.monotonic()
                self._expect = sum(j.n for j in batch) + sum(j.n for j in self._queue)
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
            if self.on_batch is not None:
                self.on_batch(self.name, sum(j.n for j in batch), seconds, error, tokens, nfe)
