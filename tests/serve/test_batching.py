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


def test_prompts_of_any_length_share_a_masked_batch_each_row_as_alone(slow_batching_server):
    """Masked diffusion: prompts of three lengths, seeded, are left-padded into one batch, and each
    completion equals the same request decoded alone."""
    url = slow_batching_server.url
    bodies = [{"model": "masked", "prompt": p, "max_tokens": 10, "steps": 10, "seed": 3 + i}
              for i, p in enumerate(["to be", "not to be", "whether tis nobler", "to"])]
    alone = [_post(url, b)["choices"][0]["text"] for b in bodies]
    crowd = _concurrently(url, bodies)
    assert [c["usage"]["batch_rows"] for c in crowd] == [4] * 4
    assert [c["choices"][0]["text"] for c in crowd] == alone


def test_block_diffusion_batches_prompt_lengths_on_the_same_block_grid(slow_batching_server):
    """Blocks of 4 on absolute positions: "to be" (5), "not to be" (9) and "to be," (6) are padded
    by whole blocks onto one grid-aligned canvas and share a batch; every row equals its decoding
    alone."""
    url = slow_batching_server.url
    same = {"model": "block", "prompt": "to be", "max_tokens": 8, "steps": 8, "seed": 11}
    bodies = [same, dict(same, prompt="not to be", seed=12), dict(same, prompt="to be,", seed=13)] * 2
    alone = [_post(url, b)["choices"][0]["text"] for b in bodies[:3]]
    out = _concurrently(url, bodies)
    assert [o["usage"]["batch_rows"] for o in out] == [6] * 6
    assert [o["choices"][0]["text"] for o in out] == alone * 2
    assert all(len(o["choices"][0]["text"]) == 8 for o in out)


def test_a_seeded_request_does_not_depend_on_its_batch_mates(slow_batching_server):
    seeded = {"model": "masked", "prompt": "to be", "max_tokens": 10, "steps": 10, "seed": 42, "n": 2}
    alone = _post(slow_batching_server.url, seeded)
    mates = [dict(seeded, seed=None, n=1)] * 4 + [dict(seeded, seed=7, prompt="not to be")]
    crowd = _concurrently(slow_batching_server.url, [seeded] + mates)
    assert [c["text"] for c in crowd[0]["choices"]] == [c["text"] for c in alone["choices"]]
    assert [c["usage"]["batch_rows"] for c in crowd] == [8] * 6      # 2 + 4 + 2 rows: one batch
    assert crowd[5]["choices"][0]["text"] != crowd[0]["choices"][0]["text"]


def test_a_seeded_request_equals_the_python_api(slow_batching_server, tiny_lms):
    """n samples of a seeded request are sample(prompt, n=…, seed=…)'s rows."""
    body = {"model": "masked", "prompt": "to be", "max_tokens": 10, "steps": 10, "seed": 5, "n": 2}
    out = _post(slow_batching_server.url, body)
    texts = tiny_lms["masked"].generate(["to be"], max_new_tokens=10, steps=10, seed=5, n=2)
    assert [c["text"] for c in out["choices"]] == [t[len("to be"):] for t in texts]


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


def test_guidance_and_top_k_requests_equal_the_python_api(slow_batching_server, tiny_lms):
    """cfg_scale (LLaDA's classifier-free guidance) and top_k (vLLM's extension) reach the sampler:
    two prompt lengths guided in one batch, each equal to generate() with the same arguments."""
    url = slow_batching_server.url
    bodies = [{"model": "masked", "prompt": p, "max_tokens": 10, "steps": 10, "seed": 9,
               "cfg_scale": 50.0, "top_k": 20} for p in ("to be", "not to be")]
    out = _concurrently(url, bodies)
    assert [o["usage"]["batch_rows"] for o in out] == [2, 2]
    lm = tiny_lms["masked"]
    for body, o in zip(bodies, out):
        want = lm.generate([body["prompt"]], max_new_tokens=10, steps=10, seed=9, cfg_scale=50.0,
                           top_k=20)[0]
        assert o["choices"][0]["text"] == want[len(body["prompt"]):]
    unguided = _post(url, dict(bodies[0], cfg_scale=0.0))["choices"][0]["text"]
    assert unguided == lm.generate(["to be"], max_new_tokens=10, steps=10, seed=9, top_k=20)[0][5:]
    # the guidance did reach the sampler (this 20-step model barely reads its prompt: a large scale)
    assert unguided != out[0]["choices"][0]["text"]
    r = httpx.post(url + "/v1/completions", json=dict(bodies[0], cfg_scale=-1), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "cfg_scale"


def test_block_streams_of_different_grid_offsets_share_a_batch_each_as_alone(slow_batching_server):
    """Per-row first columns (the grid-aligned canvas) in the stream: each stream's text and its
    last state equal the request decoded alone."""
    import json

    url = slow_batching_server.url
    bodies = [{"model": "block", "prompt": p, "max_tokens": 9, "steps": 9, "seed": 20 + i}
              for i, p in enumerate(["to be", "to be,", "not to be or"])]
    alone = [_post(url, b)["choices"][0]["text"] for b in bodies]

    def stream(body):
        events, event = [], "message"
        with httpx.stream("POST", url + "/v1/completions", timeout=60,
                          json=dict(body, stream=True, stream_states=True,
                                    stream_options={"include_usage": True})) as r:
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: {"):
                    events.append((event, json.loads(line[6:])))
                    event = "message"
        text = "".join(d["choices"][0]["text"] for e, d in events if e == "message" and d["choices"])
        states = [d for e, d in events if e == "state"]
        rows = [d["usage"]["batch_rows"] for e, d in events if e == "message" and d.get("usage")]
        return text, states[-1], rows[-1]

    with ThreadPoolExecutor(len(bodies)) as pool:
        out = list(pool.map(stream, bodies))
    for body, want, (text, last, rows) in zip(bodies, alone, out):
        assert text == want and rows == 3
        assert "".join(t for t, _ in last["segments"]) == body["prompt"] + want
        assert last["decided"] == 9
