"""Load test of ``thunderdlm serve`` over loopback, written as JSON (issue 17).

Starts the server as a subprocess (``python -m thunderdlm.cli serve RUN``) on a free loopback port
and, after a warm-up, sends

- the load: ``--requests`` requests (default 1,000) from ``--clients`` concurrent clients (16):
  ``--bad-fraction`` (10 %) malformed or oversized (invalid JSON, wrong types, unknown model or
  field, limits exceeded, a body over the size limit — each must be answered 4xx), ``--cancel-
  fraction`` (5 %) streams the client drops after their first events, and the rest well-formed
  completions with one setting (half streamed, half not);
  With ``--mixed-prompts`` the well-formed requests cycle through prompts of different lengths
  (left-padded into shared batches by the server);
- the batching check: ``--sweep-requests`` completions at 1, 4 and 16 concurrent clients,
  completion tokens per second at each (target: 16 clients ≥ 4× one); and, once the server has
  stopped, the ceiling batching can reach: ``DiffusionLM.sample`` on 1, 4 and 16 rows in-process.

Reports requests/s, p50/p99 latency of the answered well-formed requests, tokens/s, answers by
status, 5xx count, whether every malformed request got a 4xx, whether the server survived, and the
server's RSS (``/proc/PID/status`` VmRSS) before and after the load::

    THUNDERDLM_THREADS=1 python bench/serve_load.py runs/final_block16 --out bench/results/serve_load.json

The request loops are bounded (a count, and a timeout per request); only 127.0.0.1 is contacted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from thunderdlm.bench.manifest import write_bench_json

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def bad_requests(model: str, max_body: int) -> list[tuple[str, bytes | dict]]:
    """(kind, body) pairs that must each be answered with a 4xx."""
    big = {"model": model, "prompt": "x" * (max_body + 1024)}
    return [("invalid_json", b"{'model': nope"), ("not_object", b"[1, 2, 3]"),
            ("wrong_type", {"model": model, "prompt": "ROMEO", "max_tokens": "many"}),
            ("unknown_model", {"model": "no-such-model", "prompt": "ROMEO"}),
            ("unknown_field", {"model": model, "prompt": "ROMEO", "temprature": 0.5}),
            ("max_tokens_over_limit", {"model": model, "prompt": "ROMEO", "max_tokens": 10**6}),
            ("n_over_limit", {"model": model, "prompt": "ROMEO", "n": 10**4}),
            ("negative_temperature", {"model": model, "prompt": "ROMEO", "temperature": -3}),
            ("prompt_over_context", {"model": model, "prompt": "ROMEO " * 400}),
            ("oversized_body", json.dumps(big).encode())]


#: --mixed-prompts: speakers' cues of 6 to 19 characters, so concurrent prompts differ in length
MIXED_PROMPTS = ["ROMEO:\n", "JULIET:\n", "First Citizen:\n", "KING RICHARD III:\n", "HAMLET:\n",
                 "LADY MACBETH:\n", "Nurse:\n", "DUKE VINCENTIO:\n"]


class Load:
    def __init__(self, url: str, model: str, good: dict, prompts: list[str] | None = None):
        self.url, self.model, self.good = url, model, good
        self.prompts = prompts            # cycled through by the well-formed requests when given
        self.records: list[dict] = []

    def body(self, i: int) -> dict:
        return dict(self.good, prompt=self.prompts[i % len(self.prompts)]) if self.prompts else self.good

    async def plain(self, client: httpx.AsyncClient, body: dict) -> dict:
        t0 = time.perf_counter()
        r = await client.post("/v1/completions", json=body)
        rec = {"kind": "plain", "status": r.status_code, "seconds": time.perf_counter() - t0}
        if r.status_code == 200:
            rec["tokens"] = r.json()["usage"]["completion_tokens"]
        return rec

    async def stream(self, client: httpx.AsyncClient, body: dict, drop_after: int | None) -> dict:
        t0 = time.perf_counter()
        body = dict(body, stream=True, stream_options={"include_usage": True})
        tokens, events = 0, 0
        async with client.stream("POST", "/v1/completions", json=body) as r:
            status = r.status_code
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                events += 1
                if drop_after is not None and events >= drop_after:
                    break                             # the client walks away mid-stream
                data = json.loads(line[6:])
                if data.get("usage"):
                    tokens = data["usage"]["completion_tokens"]
        kind = "cancelled" if drop_after is not None else "stream"
        return {"kind": kind, "status": status, "seconds": time.perf_counter() - t0, "tokens": tokens}

    async def bad(self, client: httpx.AsyncClient, kind: str, body) -> dict:
        t0 = time.perf_counter()
        if isinstance(body, dict):
            r = await client.post("/v1/completions", json=body)
        else:
            r = await client.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
        ok_json = False
        try:
            ok_json = set(r.json()["error"]) >= {"message", "type", "param"}
        except (ValueError, KeyError, TypeError):
            pass                        # not OpenAI's error JSON: counted as such (ok_json False)
        return {"kind": "bad", "bad_kind": kind, "status": r.status_code, "error_json": ok_json,
                "seconds": time.perf_counter() - t0}

    async def run(self, plan: list[tuple], clients: int) -> float:
        queue = list(enumerate(plan))
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

        async def worker():
            async with httpx.AsyncClient(base_url=self.url, timeout=120, limits=limits) as client:
                while queue:
                    i, (what, arg) = queue.pop(0)
                    try:
                        if what == "plain":
                            rec = await self.plain(client, self.body(i))
                        elif what == "stream":
                            rec = await self.stream(client, self.body(i), None)
                        elif what == "cancel":
                            rec = await self.stream(client, self.body(i), arg)
                        else:
                            rec = await self.bad(client, *arg)
                    except httpx.HTTPError as e:      # a connection failure counts against the server
                        rec = {"kind": what, "status": f"transport:{type(e).__name__}", "seconds": 0.0}
                    self.records.append(rec)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def summarise(records: list[dict], wall: float) -> dict:
    answered = [r for r in records if r["kind"] in ("plain", "stream") and r["status"] == 200]
    lat = [r["seconds"] for r in answered]
    bad = [r for r in records if r["kind"] == "bad"]
    statuses = Counter(str(r["status"]) for r in records)
    return {"requests": len(records), "seconds": round(wall, 3),
            "requests_per_s": round(len(records) / wall, 2),
            "completion_tokens": sum(r.get("tokens", 0) for r in answered),
            "tokens_per_s": round(sum(r.get("tokens", 0) for r in answered) / wall, 1),
            "latency_p50_s": round(percentile(lat, 0.5), 4) if lat else None,
            "latency_p99_s": round(percentile(lat, 0.99), 4) if lat else None,
            "by_status": dict(sorted(statuses.items())),
            "by_kind": dict(Counter(r["kind"] for r in records)),
            "server_errors_5xx": sum(1 for r in records if str(r["status"]).startswith("5")),
            "transport_errors": sum(1 for r in records if str(r["status"]).startswith("transport")),
            "malformed": len(bad),
            "malformed_answered_4xx": sum(1 for r in bad if 400 <= r["status"] < 500 and r["error_json"]),
            "malformed_by_kind_status": dict(sorted(Counter(f"{r['bad_kind']}:{r['status']}" for r in bad).items())),
            "cancelled_mid_stream": sum(1 for r in records if r["kind"] == "cancelled")}


def make_plan(n: int, bad_fraction: float, cancel_fraction: float, model: str, max_body: int,
              rng: random.Random) -> list[tuple]:
    bads = bad_requests(model, max_body)
    n_bad, n_cancel = round(n * bad_fraction), round(n * cancel_fraction)
    plan = [("bad", bads[i % len(bads)]) for i in range(n_bad)]
    plan += [("cancel", rng.randint(1, 3)) for _ in range(n_cancel)]
    rest = n - len(plan)
    plan += [("plain", None) if i % 2 else ("stream", None) for i in range(rest)]
    rng.shuffle(plan)
    return plan


async def sweep(url: str, good: dict, levels: list[int], per_level: int,
                prompts: list[str] | None = None) -> dict:
    out = {}
    for clients in levels:
        load = Load(url, "", good, prompts)
        wall = await load.run([("plain", None)] * per_level, clients)
        s = summarise(load.records, wall)
        out[str(clients)] = {"clients": clients, "requests": per_level, "seconds": s["seconds"],
                             "requests_per_s": s["requests_per_s"], "tokens_per_s": s["tokens_per_s"],
                             "latency_p50_s": s["latency_p50_s"], "by_status": s["by_status"]}
    base = out[str(levels[0])]["tokens_per_s"]
    for v in out.values():
        v["speedup_vs_1"] = round(v["tokens_per_s"] / base, 2) if base else None
    return out


def sampler_reference(run: str, good: dict, levels: list[int], repeats: int = 3) -> dict:
    """The ceiling batching can reach: tokens/s of ``DiffusionLM.sample`` in this process on batches
    of 1, 4, 16 rows with the same settings (no HTTP, no queue), best of ``repeats``."""
    import thunderdlm
    from thunderdlm.runtime import setup_runtime

    setup_runtime()                      # THUNDERDLM_THREADS, as the served CLI process does
    lm = thunderdlm.load(run)
    lm.sample(good["prompt"], max_new_tokens=good["max_tokens"], steps=good["steps"], n=1)   # warm-up
    out = {}
    for rows in levels:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            lm.sample(good["prompt"], max_new_tokens=good["max_tokens"], steps=good["steps"], n=rows,
                      temperature=good["temperature"], threshold=good.get("threshold"))
            best = min(best, time.perf_counter() - t0)
        out[str(rows)] = {"rows": rows, "tokens_per_s": round(rows * good["max_tokens"] / best, 1)}
    for v in out.values():
        v["speedup_vs_1"] = round(v["tokens_per_s"] / out[str(levels[0])]["tokens_per_s"], 2)
    return out


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass                        # still starting: poll again until the deadline
        time.sleep(0.2)
    raise RuntimeError("the server did not become healthy")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder to serve")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--bad-fraction", type=float, default=0.10)
    p.add_argument("--cancel-fraction", type=float, default=0.05)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--sweep", default="1,4,16", help="concurrent clients of the batching check")
    p.add_argument("--sweep-requests", type=int, default=64, help="requests at each sweep level")
    p.add_argument("--max-batch-rows", type=int, default=64)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-prompts", action="store_true",
                   help="well-formed requests cycle through prompts of 6-19 characters (MIXED_PROMPTS) "
                        "instead of one prompt, so batches mix prompt lengths (left-padded)")
    p.add_argument("--out", default="bench/results/serve_load.json")
    args = p.parse_args(argv)

    port, model = free_port(), Path(args.run).resolve().name
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "thunderdlm.cli", "serve", args.run, "--port", str(port),
           "--max-queue", str(4 * args.clients), "--max-batch-rows", str(args.max_batch_rows),
           "--batch-wait-ms", str(args.batch_wait_ms)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_healthy(url, proc)
        good = {"model": model, "prompt": "ROMEO:\n", "max_tokens": args.max_tokens, "steps": args.steps,
                "temperature": 0.8}
        if args.threshold is not None:
            good["threshold"] = args.threshold
        prompts = MIXED_PROMPTS if args.mixed_prompts else None
        asyncio.run(Load(url, model, good, prompts).run([("plain", None)] * 2 * args.clients, args.clients))  # warm-up
        rss_before = rss_mib(proc.pid)
        load = Load(url, model, good, prompts)
        plan = make_plan(args.requests, args.bad_fraction, args.cancel_fraction, model, 1 << 20,
                         random.Random(args.seed))
        wall = asyncio.run(load.run(plan, args.clients))
        rss_after = rss_mib(proc.pid)
        alive = proc.poll() is None and httpx.get(url + "/health", timeout=5).status_code == 200
        levels = [int(c) for c in args.sweep.split(",")]
        batching = asyncio.run(sweep(url, good, levels, args.sweep_requests, prompts))
        metrics = httpx.get(url + "/metrics", timeout=5).text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    reference = sampler_reference(args.run, good, levels)     # with the server stopped: no contention
    res = {"run": args.run, "model": model, "settings": good, "clients": args.clients,
           "mixed_prompts": prompts,
           "threads": os.environ.get("THUNDERDLM_THREADS"),
           "load": summarise(load.records, wall),
           "server_alive_after": alive, "rss_mib_before": round(rss_before, 1),
           "rss_mib_after": round(rss_after, 1),
           "rss_growth_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
           "batching": batching,
           "sampler_batch_reference": reference,
           "batches": [line for line in metrics.splitlines() if line.startswith("thunderdlm_batches_total")]}
    write_bench_json(res, args.out, ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
