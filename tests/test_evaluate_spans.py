"""evaluate_spans: held-out windows, token layout per mode/process, BLEU bounds, oracle, errors, CLI."""
import json
import math
import random

import numpy as np
import pytest
import torch

import thunderdlm
import thunderdlm.api as sampler_host   # the sampler evaluate_spans reaches through lm.sample_tokens
from thunderdlm.cli import main
from thunderdlm.data import TokenData, eval_windows
from thunderdlm.errors import ThunderError
from thunderdlm.evaluate import evaluate_spans, exact_match_chars
from thunderdlm.run_config import RunConfig
from thunderdlm.sampling.loop import SampleResult
from thunderdlm.train import Trainer

SEQ = 64
CONTEXT, SPAN = 16, 32         # windows of 48 tokens (char level); a span holds several words, so
                               # the pooled spans have word 4-grams and BLEU is defined
WORDS = "to be or not that is the question whether tis nobler in mind suffer slings arrows".split()


def corpus() -> str:
    rng = random.Random(0)      # non-periodic text, so different offsets hold different spans
    return " ".join(rng.choice(WORDS) for _ in range(2000)) + "."


def tiny_run(root, data, process: str, model: dict):
    cfg = RunConfig.from_data({"data": {"dir": str(data), "seq_len": SEQ},
                               "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, **model},
                               "process": {"name": process},
                               "train": {"batch_size": 8, "max_steps": 3, "lr": 1e-2, "eval_interval": 0,
                                         "ckpt_interval": 3}, "seed": 3})
    Trainer(cfg, root, show=False).fit()
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from thunderdlm.data import prepare_data
    root = tmp_path_factory.mktemp("span_data")
    (root / "c.txt").write_text(corpus())
    return prepare_data(root / "d", source=None, paths=[str(root / "c.txt")], tokenizer="char")


@pytest.fixture(scope="module")
def lms(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("span_runs")
    return {"masked": thunderdlm.load(tiny_run(root / "masked", data, "masked", {"name": "ddit", "cond_dim": 16}),
                                      device="cpu"),
            "autoregressive": thunderdlm.load(tiny_run(root / "ar", data, "autoregressive",
                                                       {"name": "gpt", "causal": True}), device="cpu")}


def val_tokens(data) -> np.ndarray:
    return np.asarray(TokenData(data).split("val")).astype(np.int64)


@pytest.mark.parametrize("process", ["masked", "autoregressive"])
@pytest.mark.parametrize("mode", ["continue", "infill"])
def test_spans_layout_and_scores(lms, data, monkeypatch, process, mode):
    lm, val, calls = lms[process], val_tokens(data), []
    real = sampler_host.run_sampler

    def spy(proc, model, x_init, editable, **kw):
        res = real(proc, model, x_init, editable, **kw)
        calls.append((x_init.clone(), editable.clone(), res.tokens.clone()))
        return res

    monkeypatch.setattr(sampler_host, "run_sampler", spy)
    n = 5
    res = evaluate_spans(lm, n, mode=mode, context=CONTEXT, span=SPAN, steps=4, seed=1, batch_size=2)
    json.dumps(res)                                                          # JSON-ready
    two_sided = process == "masked" and mode == "infill"
    lo = CONTEXT if mode == "continue" else CONTEXT // 2
    assert res["mode"] == mode and res["n"] == n and res["span_start"] == lo
    assert res["uses_right_context"] is two_sided
    assert 0.0 <= res["bleu"]["score"] <= 100.0 and 0.0 <= res["exact_match_chars"] <= 1.0
    assert res["nfe"] >= 1 and len(calls) == 3                               # batches of 2, 2, 1

    # windows: evenly spaced over the whole split, non-overlapping, first and last included
    width = CONTEXT + SPAN
    offsets, count = res["offsets"], len(val) // width
    assert offsets[0] == 0 and offsets[-1] == (count - 1) * width
    assert all(o % width == 0 for o in offsets) and all(b - a >= width for a, b in zip(offsets, offsets[1:]))

    # the sampler saw exactly the bins' tokens around the span; the span (and only it) was editable,
    # and the known tokens came back unchanged; AR infill lays out the left text only
    laid = width if two_sided else lo + SPAN
    x_init = torch.cat([c[0] for c in calls])
    edit = torch.cat([c[1] for c in calls])
    out = torch.cat([c[2] for c in calls])
    assert x_init.shape == (n, laid)
    expect_edit = torch.zeros(laid, dtype=torch.bool)
    expect_edit[lo:lo + SPAN] = True
    assert torch.equal(edit, expect_edit.expand(n, laid))
    for i, off in enumerate(offsets):
        window = torch.from_numpy(val[off:off + laid])
        assert torch.equal(x_init[i][~expect_edit], window[~expect_edit])
        assert torch.equal(out[i][~expect_edit], window[~expect_edit])
    # the examples' references are the bins' tokens at [offset + lo, offset + lo + span)
    decode = lm.tokenizer.decode
    assert len(res["examples"]) == 3
    for i, ex in enumerate(res["examples"]):
        off = offsets[i]
        assert ex["offset"] == off
        assert ex["reference"] == decode(val[off + lo:off + lo + SPAN].tolist())
        assert ex["generated"] == decode(out[i, lo:lo + SPAN].tolist())
        assert decode(val[off:off + lo].tolist()).endswith(ex["prompt_tail"])
        if mode == "infill":
            assert ex["right_head"] == decode(val[off + lo + SPAN:off + width].tolist())


@pytest.mark.parametrize("mode", ["continue", "infill"])
def test_oracle_sampler_scores_perfectly(lms, data, monkeypatch, mode):
    lm = lms["masked"]
    width, n = CONTEXT + SPAN, 4
    truth = eval_windows(val_tokens(data), width, n)                         # independent window choice

    def oracle(proc, model, x_init, editable, **kw):
        return SampleResult(torch.where(editable, truth[:, :x_init.shape[1]], x_init), nfe=7, steps=kw["steps"])

    monkeypatch.setattr(sampler_host, "run_sampler", oracle)
    res = evaluate_spans(lm, n, mode=mode, context=CONTEXT, span=SPAN, steps=3)
    assert res["bleu"]["score"] == pytest.approx(100.0)
    assert res["exact_match_chars"] == 1.0 and res["nfe"] == 7

    def off_by_one(proc, model, x_init, editable, **kw):     # a wrong answer must not score perfectly
        return SampleResult(torch.where(editable, truth.roll(-1, dims=1)[:, :x_init.shape[1]], x_init), nfe=7, steps=3)

    monkeypatch.setattr(sampler_host, "run_sampler", off_by_one)
    res = evaluate_spans(lm, n, mode=mode, context=CONTEXT, span=SPAN, steps=3)
    assert res["bleu"]["score"] < 100.0 and res["exact_match_chars"] < 1.0


def test_exact_match_chars_counts_length_differences():
    assert exact_match_chars(["abc", "xy"], ["abc", "xz"]) == pytest.approx(4 / 5)
    assert exact_match_chars(["ab"], ["abcd"]) == pytest.approx(2 / 4)
    assert math.isnan(exact_match_chars([""], [""]))


def test_errors(lms):
    lm = lms["autoregressive"]
    with pytest.raises(ThunderError, match=r"--bleu-context 60 \+ --bleu-span 8 = 68.*context \(64"):
        evaluate_spans(lm, 2, context=60, span=8)
    with pytest.raises(ThunderError, match="--bleu-mode"):
        evaluate_spans(lm, 2, mode="middle", context=CONTEXT, span=SPAN)
    with pytest.raises(ThunderError, match="fewer than the 100000 asked"):
        evaluate_spans(lm, 100000, context=CONTEXT, span=SPAN)
    with pytest.raises(ThunderError, match="unknown sampling options"):
        evaluate_spans(lm, 2, context=CONTEXT, span=SPAN, temprature=0.5)


def test_cli_eval_bleu(lms, tmp_path, capsys):
    run = lms["masked"].run_dir
    out = tmp_path / "eval.json"
    rc = main(["eval", str(run), "--windows", "2", "--t-samples", "1", "--steps", "4", "--bleu", "3",
               "--bleu-mode", "infill", "--bleu-context", str(CONTEXT), "--bleu-span", str(SPAN),
               "--json", str(out), "--device", "cpu"])
    assert rc == 0
    sp = json.loads(out.read_text())["spans"]
    assert sp["mode"] == "infill" and sp["n"] == 3 and sp["span"] == SPAN and sp["uses_right_context"] is True
    assert "spans (infill, both sides): BLEU" in capsys.readouterr().out
    rc = main(["eval", str(run), "--bleu", "2", "--bleu-context", "60", "--bleu-span", "8",
               "--json", str(tmp_path / "x.json"), "--device", "cpu"])
    assert rc == 2 and "error: --bleu-context 60 + --bleu-span 8" in capsys.readouterr().err
