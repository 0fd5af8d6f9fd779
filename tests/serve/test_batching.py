"""Concurrent requests with the same settings share a sampling batch; a seeded request's tokens
never depend on what else is being decoded."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest


@pytest.fixture(scope="module")
def slow_batching_server(make_server):
    with make_server(batch_wait_ms=1000) as s:     # a wide window: concurrent test requests always meet
        yield s


def _post(url: str, body: dict) -> dict:
    r = httpx.post(url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _concurrently(url: str, bodies: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: _post(url, b), bodies))


def test_same_settings_share_one_batch_and_other_lengths_wait_for_their_own(slow_batching_server):
    same = {"model": "block", "prompt": "to be", "max_tokens": 8, "steps": 8}
    other = dict(same, prompt="not to be")                       # another prompt length
    out = _concurrently(slow_batching_server.url, [same] * 4 + [other] * 2)
    rows = [o["usage"]["batch_rows"] for o in out]
    assert rows == [4, 4, 4, 4, 2, 2]
    assert all(len(o["choices"][0]["text"]) == 8 for o in out)


def test_a_seeded_request_does_not_depend_on_its_batch_mates(slow_batching_server):
    seeded = {"model": "masked", "prompt": "to be", "max_tokens": 10, "steps": 10, "seed": 42, "n": 2}
    alone = _post(slow_batching_server.url, seeded)
    mates = [dict(seeded, seed=None, n=1)] * 4 + [dict(seeded, seed=7)]
    crowd = _concurrently(slow_batching_server.url, [seeded] + mates)
    assert [c["text"] for c in crowd[0]["choices"]] == [c["text"] for c in alone["choices"]]
    assert crowd[0]["usage"]["batch_rows"] == 2                 # decoded with its own n rows only
    assert [c["usage"]["batch_rows"] for c in crowd[1:5]] == [4] * 4   # the unseeded ones were batched
    assert crowd[5]["choices"][0]["text"] != crowd[0]["choices"][0]["text"]


def test_stream_and_plain_requests_share_a_batch(slow_batching_server):
    body = {"model": "block", "prompt": "to be", "max_tokens": 8}

    def stream(_):
        with httpx.stream("POST", slow_batching_server.url + "/v1/completions", timeout=60,
                          json=dict(body, stream=True, stream_options={"include_usage": True})) as r:
            lines = [l for l in r.iter_lines() if l.startswith("data: {")]
        import json
        return json.loads(lines[-1][6:])["usage"]["batch_rows"]

    with ThreadPoolExecutor(3) as pool:
        a = pool.submit(stream, 0)
        b = pool.submit(_post, slow_batching_server.url, body)
        c = pool.submit(stream, 0)
        assert a.result() == b.result()["usage"]["batch_rows"] == c.result() == 3
