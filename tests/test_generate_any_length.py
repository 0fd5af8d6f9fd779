"""Continuations past the context (a rolling window), stop strings / EOS, threshold decoding through
the API and the CLI, on tiny trained runs of three processes."""
import json

import pytest
import torch

import thunderdlm
from thunderdlm.errors import SamplingError
from thunderdlm.run_config import RunConfig
from thunderdlm.sampling.rolling import StopRule, window_step
from thunderdlm.train import Trainer

TEXT = "to be or not to be, that is the question. "
PROCESSES = {
    "block": ({"name": "block", "block_size": 4}, {"name": "ddit"}),
    "masked": ({"name": "masked"}, {"name": "ddit"}),
    "autoregressive": ({"name": "autoregressive"}, {"name": "gpt", "causal": True, "pos_emb": "learned"}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from thunderdlm.data import prepare_data
    root = tmp_path_factory.mktemp("anylen")
    (root / "c.txt").write_text(TEXT * 200)
    data = prepare_data(root / "d", source=None, paths=[str(root / "c.txt")], tokenizer="char")
    out = {}
    for name, (process, model) in PROCESSES.items():
        cfg = RunConfig.from_data({
            "data": {"dir": str(data), "seq_len": 32}, "process": process,
            "model": {**model, "n_layer": 1, "n_head": 2, "n_embd": 32, "cond_dim": 16},
            "train": {"batch_size": 16, "max_steps": 150, "lr": 1e-2, "eval_interval": 0,
                      "ckpt_interval": 150}})
        Trainer(cfg, root / name, show=False).fit()
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", list(PROCESSES))
def test_max_new_tokens_beyond_the_context_rolls_the_window(runs, name):
    lm = thunderdlm.load(runs[name])
    texts, res = lm.sample("to be", max_new_tokens=100, n=2, steps=100, seed=0,
                           remasking="low_confidence")
    assert all(t.startswith("to be") and len(t) == 105 for t in texts)
    assert res.generated == 200 and res.nfe >= 1
    assert set(texts[0]) <= set(TEXT)


@pytest.mark.parametrize("name", ["block", "autoregressive"])
def test_stop_string_ends_every_row_early_and_is_cut(runs, name):
    lm = thunderdlm.load(runs[name])
    prompt = "to be or not to be, that is"
    texts, res = lm.sample(prompt, max_new_tokens=200, n=2, seed=0, steps=200,
                           remasking="low_confidence", stop=[" ", ","])
    assert res.stopped and res.generated < 400                   # every row stopped early
    assert all(t.startswith(prompt) and " " not in t[len(prompt):] and "," not in t[len(prompt):]
               for t in texts)


def test_threshold_decoding_reports_nfe_and_tokens_per_call(runs):
    lm = thunderdlm.load(runs["block"])
    _, one = lm.sample("to be", length=24, steps=24, seed=0, remasking="low_confidence")
    _, fast = lm.sample("to be", length=24, seed=0, threshold=0.5, temperature=0.0)
    assert one.nfe == 24 and one.tokens_per_call == pytest.approx(1.0)
    assert fast.nfe < one.nfe and fast.tokens_per_call > 1.0          # several tokens per call


def test_cli_sample_threshold_and_max_new_tokens(runs, capsys):
    from thunderdlm.cli import main
    assert main(["sample", str(runs["block"]), "--prompt", "to be", "--max-new-tokens", "40",
                 "--threshold", "0.7", "--json", "--seed", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["samples"][0]) == 45 and out["nfe"] >= 1
    assert out["tokens_per_call"] == pytest.approx(40 / out["nfe"])


def test_bad_requests_are_named(runs):
    lm = thunderdlm.load(runs["block"])
    with pytest.raises(SamplingError, match="prompt has"):
        lm.sample(TEXT, max_new_tokens=5)
    with pytest.raises(SamplingError, match=r"'threshold' \(--threshold\): must be"):
        lm.sample("to", length=8, threshold=1.5)
    with pytest.raises(SamplingError, match="max_new_tokens"):
        lm.sample("to", max_new_tokens=0)


def test_threshold_needs_a_masked_process():
    from thunderdlm.config import from_dict
    from thunderdlm.processes import ProcessConfig, SampleOptions, build_process
    from thunderdlm.sampling.loop import run_sampler
    proc = build_process(from_dict(ProcessConfig, {"name": "uniform"}), 5)
    with pytest.raises(SamplingError, match="--threshold needs"):
        run_sampler(proc, None, torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool),
                    steps=4, options=SampleOptions(threshold=0.9))


def test_stop_rule_eos_and_strings():
    rule = StopRule(eos_id=7, strings=("END",))
    decode = lambda ids: "".join("x" if i != 9 else "END" for i in ids)
    assert rule.row_stopped([1, 7, 2], decode) and rule.row_stopped([1, 9], decode)
    assert not rule.row_stopped([1, 2], decode)
    assert rule.cut_ids([1, 2, 7, 3]) == [1, 2] and rule.cut_text("abENDcd") == "ab"
    assert window_step(32, 4) == 16 and window_step(30, 4) == 12 and window_step(10, None) == 5
