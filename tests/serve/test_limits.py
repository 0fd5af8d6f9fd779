"""Queue limits (429 + Retry-After), cancellation of abandoned work, /health, /metrics, CORS."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

LONG = {"model": "masked", "prompt": "to be", "max_tokens": 1000, "steps": 1000}   # rolls the window: seconds


def _cancelled_batches(url: str) -> int:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith('thunderdlm_batches_total{model="masked",outcome="cancelled"}'):
            return int(float(line.split()[-1]))
    return 0


def _wait_for(cond, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def small_queue(make_server):
    with make_server(max_queue=1, batch_wait_ms=0) as s:
        yield s


@pytest.fixture
def gate(monkeypatch):
    """Holds every batch at its start until ``gate.set()``: a job stays running (or queued) for
    as long as a test needs, whatever the machine's speed."""
    from thunderdlm.serve import scheduler

    event, real = threading.Event(), scheduler.run_batch

    def held(lm, jobs):
        assert event.wait(30)
        return real(lm, jobs)

    monkeypatch.setattr(scheduler, "run_batch", held)
    yield event
    event.set()


def test_full_queue_is_429_with_retry_after_and_a_dropped_stream_cancels_its_work(small_queue, gate):
    url = small_queue.url
    before = _cancelled_batches(url)
    queue = lambda: httpx.get(url + "/health").json()["queue"]["masked"]   # noqa: E731
    with httpx.stream("POST", url + "/v1/completions", json=dict(LONG, stream=True), timeout=60) as running:
        assert running.status_code == 200
        assert _wait_for(lambda: queue() == 0)                     # taken by the worker, held at the gate
        waiting = threading.Thread(target=lambda: httpx.post(url + "/v1/completions", timeout=60,
                                                             json=dict(LONG, max_tokens=4, steps=4)))
        waiting.start()
        assert _wait_for(lambda: queue() == 1)
        r = httpx.post(url + "/v1/completions", json=dict(LONG, max_tokens=4, steps=4))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
    time.sleep(0.3)                      # the server notices the closed stream
    gate.set()
    # the client closed the stream before its batch ran: the batch is abandoned at its first step,
    # and the queued request then runs
    assert _wait_for(lambda: _cancelled_batches(url) == before + 1)
    waiting.join(timeout=30)
    assert not waiting.is_alive()


def test_a_client_that_gives_up_waiting_cancels_its_work(small_queue, gate):
    url = small_queue.url
    before = _cancelled_batches(url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=LONG, timeout=1.0)
    time.sleep(0.5)                      # the server polls for the disconnect every 0.25 s
    gate.set()
    assert _wait_for(lambda: _cancelled_batches(url) == before + 1)


def test_health_and_prometheus_metrics(server):
    assert httpx.post(server.url + "/v1/completions", json={"model": "masked", "prompt": "to", "max_tokens": 3}
                      ).status_code == 200
    httpx.post(server.url + "/v1/completions", json={"model": "masked", "max_tokens": -1})
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and set(h["models"]) == {"masked", "block", "chat"}
    r = httpx.get(server.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("thunderdlm_requests_total", "thunderdlm_request_errors_total", "thunderdlm_request_seconds_bucket",
                 "thunderdlm_generated_tokens_total", "thunderdlm_nfe_total", "thunderdlm_tokens_per_second",
                 "thunderdlm_queue_depth"):
        assert f"# TYPE {name.removesuffix('_bucket')} " in text and f"\n{name}{{" in text
    assert 'thunderdlm_requests_total{path="/v1/completions",status="400"}' in text
    assert 'thunderdlm_queue_depth{model="masked"} 0' in text


def test_cors_is_off_unless_asked(server, make_server):
    origin = {"Origin": "http://example.test"}
    assert "access-control-allow-origin" not in httpx.get(server.url + "/v1/models", headers=origin).headers
    with make_server(cors_origins=["http://example.test"]) as s:
        r = httpx.get(s.url + "/v1/models", headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://example.test"


def test_defaults_listen_on_loopback_only():
    from thunderdlm.serve.config import ServeConfig

    assert ServeConfig().host == "127.0.0.1" and ServeConfig().cors_origins == []
