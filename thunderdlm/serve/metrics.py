"""Server metrics in Prometheus' text format (``GET /metrics``), kept in memory.

Requests and errors by path and status, request latency (a histogram), generated tokens, network
evaluations (NFE), rows per sampling batch, the tokens/s of the last batch, and each model's queue
depth (read from its scheduler when scraped).
"""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(**kv) -> str:
    body = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                    for k, v in kv.items())
    return "{" + body + "}" if body else ""


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency_buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.tokens: dict[str, int] = defaultdict(int)
        self.nfe: dict[str, int] = defaultdict(int)
        self.batches: dict[tuple[str, str], int] = defaultdict(int)
        self.batch_rows: dict[str, int] = defaultdict(int)
        self.last_tokens_per_s: dict[str, float] = {}
        self.queue_depth: dict[str, Callable[[], int]] = {}

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            buckets = self.latency_buckets[path]
            for i, edge in enumerate(LATENCY_BUCKETS):
                if seconds <= edge:
                    buckets[i] += 1
            buckets[-1] += 1
            self.latency_sum[path] += seconds

    def observe_batch(self, model: str, rows: int, seconds: float, error: str | None,
                      tokens: int = 0, nfe: int = 0) -> None:
        with self._lock:
            self.batches[(model, error or "ok")] += 1
            self.batch_rows[model] += rows
            self.tokens[model] += tokens
            self.nfe[model] += nfe
            if error is None and seconds > 0:
                self.last_tokens_per_s[model] = tokens / seconds

    def render(self) -> str:
        with self._lock:
            out = ["# HELP thunderdlm_requests_total HTTP requests by path and status.",
                   "# TYPE thunderdlm_requests_total counter"]
            out += [f"thunderdlm_requests_total{_labels(path=p, status=s)} {v}"
                    for (p, s), v in sorted(self.requests.items())]
            out += ["# HELP thunderdlm_request_errors_total HTTP requests answered with a 4xx or 5xx.",
                    "# TYPE thunderdlm_request_errors_total counter"]
            out += [f"thunderdlm_request_errors_total{_labels(path=p, status=s)} {v}"
                    for (p, s), v in sorted(self.requests.items()) if s >= 400]
            out += ["# HELP thunderdlm_request_seconds Request latency (streams: until the last event).",
                    "# TYPE thunderdlm_request_seconds histogram"]
            for path, buckets in sorted(self.latency_buckets.items()):
                for edge, count in zip(LATENCY_BUCKETS, buckets):
                    out.append(f"thunderdlm_request_seconds_bucket{_labels(path=path, le=edge)} {count}")
                out.append(f"thunderdlm_request_seconds_bucket{_labels(path=path, le='+Inf')} {buckets[-1]}")
                out.append(f"thunderdlm_request_seconds_sum{_labels(path=path)} {self.latency_sum[path]:.6f}")
                out.append(f"thunderdlm_request_seconds_count{_labels(path=path)} {buckets[-1]}")
            for name, help_, kind, table in (
                    ("generated_tokens_total", "Completion tokens generated.", "counter", self.tokens),
                    ("nfe_total", "Network evaluations (one serves a whole batch).", "counter", self.nfe),
                    ("batch_rows_total", "Rows decoded, summed over sampling batches.", "counter", self.batch_rows),
                    ("tokens_per_second", "Completion tokens per second of the last batch.", "gauge",
                     self.last_tokens_per_s)):
                out += [f"# HELP thunderdlm_{name} {help_}", f"# TYPE thunderdlm_{name} {kind}"]
                out += [f"thunderdlm_{name}{_labels(model=m)} {v:g}" for m, v in sorted(table.items())]
            out += ["# HELP thunderdlm_batches_total Sampling batches by outcome.",
                    "# TYPE thunderdlm_batches_total counter"]
            out += [f"thunderdlm_batches_total{_labels(model=m, outcome=o)} {v}"
                    for (m, o), v in sorted(self.batches.items())]
            out += ["# HELP thunderdlm_queue_depth Jobs waiting for a batch.", "# TYPE thunderdlm_queue_depth gauge"]
            out += [f"thunderdlm_queue_depth{_labels(model=m)} {f()}" for m, f in sorted(self.queue_depth.items())]
        return "\n".join(out) + "\n"
