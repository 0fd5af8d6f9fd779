"""The official ``openai`` client against a live local server: completions, streaming, chat, errors."""
from __future__ import annotations

import httpx
import pytest

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_every_run(client):
    ids = {m.id for m in client.models.list()}
    assert ids == {"masked", "block", "chat"}


def test_completion_has_text_usage_finish_reason_and_nfe(client, tiny_lms):
    r = client.completions.create(model="masked", prompt="to be", max_tokens=12, seed=3,
                                  extra_body={"steps": 6})
    (choice,) = r.choices
    assert r.object == "text_completion" and choice.finish_reason == "length"
    assert len(choice.text) == 12                                 # a char model: 12 tokens, 12 characters
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 12 and r.usage.total_tokens == 17
    # a seeded request is exactly the Python API's sample with the same arguments
    (text,), res = tiny_lms["masked"].sample("to be", max_new_tokens=12, steps=6, seed=3)
    assert "to be" + choice.text == text
    assert 1 <= r.usage.model_extra["nfe"] == res.nfe <= 6


def test_n_and_list_prompts_give_choices_in_order(client):
    r = client.completions.create(model="block", prompt=["to be", "the question"], n=2, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(len(c.text) == 8 for c in r.choices)


def test_streaming_concatenates_to_the_same_text(client):
    args = dict(model="block", prompt="to be or", max_tokens=20, seed=7)
    full = client.completions.create(**args).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == full
    assert sum(1 for t in texts if t) >= 2                         # block by block, not all at the end
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == 20 and chunks[-1].usage.model_extra["nfe"] > 0


def test_suffix_infills_between_prompt_and_suffix(client):
    r = client.completions.create(model="masked", prompt="to be ", suffix=" not to be", max_tokens=5,
                                  seed=1, echo=True)
    text = r.choices[0].text
    assert text.startswith("to be ") and len(text) == len("to be ") + 5


def test_infill_template_extension(client):
    r = client.completions.create(model="masked", prompt="", max_tokens=None,
                                  extra_body={"infill": "to [MASK:4] or not", "steps": 4})
    assert len(r.choices[0].text) == 4 and r.usage.completion_tokens == 4


def test_stop_string_cuts_and_says_stop(client):
    r = client.completions.create(model="masked", prompt="to be", max_tokens=40, stop=[" "], seed=0,
                                  temperature=0)
    c = r.choices[0]
    assert " " not in c.text and c.finish_reason == "stop"


def test_chat_completion_with_a_chat_template(client):
    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "to be"}],
                                       max_tokens=6, seed=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens <= 6 and r.choices[0].finish_reason in ("length", "stop")
    chunks = list(client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=4, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason


@pytest.mark.parametrize("kwargs, param", [
    (dict(model="masked", prompt="t", max_tokens=100000), "max_tokens"),
    (dict(model="masked", prompt="t", n=500), "n"),
    (dict(model="masked", prompt="t", temperature=-1), "temperature"),
    (dict(model="masked", prompt="t", top_p=0), "top_p"),
    (dict(model="masked", prompt="t", logprobs=3), "logprobs"),
    (dict(model="masked", prompt="t", presence_penalty=1.0), "presence_penalty"),
    (dict(model="masked", prompt="t", stop=["a", "b", "c", "d", "e"]), "stop"),
    (dict(model="masked", prompt="t" * 200), "prompt"),
    (dict(model="masked", prompt="t", extra_body={"steps": 0}), "steps"),
    (dict(model="masked", prompt="t", extra_body={"steps": 10**6}), "steps"),
    (dict(model="masked", prompt="t", extra_body={"remasking": "nope"}), "remasking"),
    (dict(model="masked", prompt="t", extra_body={"threshold": 2}), "threshold"),
    (dict(model="masked", prompt="t", extra_body={"block_length": 0}), "block_length"),
    (dict(model="masked", prompt="t", extra_body={"bogus_field": 1}), "bogus_field"),
    (dict(model="masked", prompt="t", suffix="o", max_tokens=40), "max_tokens"),
    (dict(model="masked", prompt="", extra_body={"infill": "no spans here"}), "infill"),
    (dict(model="masked", prompt="t", suffix="o", max_tokens=4, extra_body={"steps": 1, "block_length": 2}),
     "steps"),
])
def test_bad_requests_are_400_naming_the_field(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**kwargs)
    assert e.value.status_code == 400 and e.value.param == param, e.value.body


def test_unknown_model_is_404_and_chat_without_template_is_400(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="t")
    assert e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="masked", messages=[{"role": "user", "content": "t"}])
    assert e.value.param == "model" and "chat template" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=[])
    assert e.value.param == "messages"


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400), (b"[1, 2]", 400), (b'{"model": "masked", "prompt": 3}', 400),
    (b'{"model": "masked", "prompt": []}', 400), (b"\xff\xfe", 400), (b"x" * (1 << 21), 413),
    (b'{"model": ' + b"[" * 50000 + b"]" * 50000 + b"}", 400),             # nested past the parser's depth
])
def test_malformed_bodies_get_openai_error_json(server, body, status):
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


def test_api_key_is_required_when_set(make_server):
    with make_server(api_key="s3cret") as s:
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert len(good.models.list().data) == 3
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200          # health and the page stay open
        assert httpx.get(s.url + "/").status_code == 200
