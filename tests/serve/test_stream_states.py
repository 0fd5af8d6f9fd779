"""The opt-in per-step state events: the whole canvas after every denoising step, masked positions
marked, ending fully decided and agreeing with the text deltas."""
from __future__ import annotations

import json

import httpx


def _events(url: str, body: dict) -> list[tuple[str, dict]]:
    out, event = [], "message"
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: {"):
                out.append((event, json.loads(line[6:])))
                event = "message"
    return out


def test_state_events_show_the_canvas_resolving(server):
    body = {"model": "block", "prompt": "to be", "max_tokens": 12, "steps": 12, "seed": 5,
            "stream": True, "stream_states": True}
    events = _events(server.url, body)
    states = [d for e, d in events if e == "state"]
    text = "".join(d["choices"][0]["text"] for e, d in events if e == "message" and d["choices"])
    assert len(states) >= 3 and [s["step"] for s in states] == sorted(s["step"] for s in states)
    kinds = [{k for _, k in s["segments"]} for s in states]
    assert "m" in kinds[0] and "m" not in kinds[-1]                 # masked at first, decided at the end
    decided = [s["decided"] for s in states]
    assert decided == sorted(decided) and decided[-1] == 12
    assert "".join(t for t, _ in states[-1]["segments"]) == "to be" + text
    assert all(s["object"] == "text_completion.state" and s["index"] == 0 for s in states)


def test_infill_states_keep_the_known_text(server):
    body = {"model": "masked", "prompt": "to ", "suffix": " or not", "max_tokens": 4, "steps": 4,
            "stream": True, "stream_states": True, "seed": 0}
    states = [d for e, d in _events(server.url, body) if e == "state"]
    for s in states:
        known = "".join(t for t, k in s["segments"] if k == "p")
        assert known == "to  or not"


def test_without_the_flag_a_stream_has_no_state_events(server):
    events = _events(server.url, {"model": "block", "prompt": "to be", "max_tokens": 8, "stream": True})
    assert events and all(e == "message" for e, _ in events)
