"""The diagnostic scripts under bench/ run end to end on tiny runs and write what they say."""
import json
import runpy
import sys

import pytest

from thunderdlm.data import prepare_data
from thunderdlm.run_config import RunConfig
from thunderdlm.train import Trainer

GPT = {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 24, "causal": True, "pos_emb": "learned",
       "time_conditioning": False}
DDIT = {"name": "ddit", "n_layer": 1, "n_head": 2, "n_embd": 24, "cond_dim": 16, "time_conditioning": True}


def train(tmp_path, name, model, process, steps=6):
    text = tmp_path / "c.txt"
    if not text.exists():
        text.write_text("to be or not to be, that is the question. " * 100)
    data = tmp_path / "d"
    if not data.exists():
        prepare_data(data, source=None, paths=[str(text)], tokenizer="char")
    cfg = RunConfig.from_data({
        "data": {"dir": str(data), "seq_len": 24}, "model": model, "process": process,
        "train": {"batch_size": 8, "max_steps": steps, "lr": 3e-3, "eval_interval": 0,
                  "ckpt_interval": steps, "log_interval": 1}})
    Trainer(cfg, tmp_path / name, show=False).fit()
    return tmp_path / name


def run_script(path, *args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [path, *map(str, args)])
    runpy.run_path(path, run_name="__main__")


def test_bound_profile_adds_up_its_terms(tmp_path, monkeypatch, capsys):
    run = train(tmp_path, "emb", DDIT, {"name": "embedding", "latent_dim": 8, "head": "softmax",
                                        "t_sampling": "importance", "t_bins": 4, "input_scale": 0.1})
    out = tmp_path / "p.json"
    run_script("bench/bound_profile.py", run, "--windows", 4, "--points", 20, "--out", out,
               monkeypatch=monkeypatch)
    r = json.loads(out.read_text())
    assert len(r["integrand"]) == 20 and min(r["integrand"]) >= 0
    assert r["nats_per_token"] == pytest.approx(r["decoder"] + r["prior"] + r["diffusion"])
    assert sum(r["by_tenth"]) == pytest.approx(r["diffusion"], rel=1e-6)
    with pytest.raises(SystemExit, match="embedding"):
        run_script("bench/bound_profile.py", train(tmp_path, "ar", GPT, {"name": "autoregressive"}),
                   monkeypatch=monkeypatch)


def test_forcing_levels_reports_every_level_and_the_sampler(tmp_path, monkeypatch):
    run = train(tmp_path, "df", GPT, {"name": "forcing", "timesteps": 8, "sampling_timesteps": 8,
                                      "objective": "pred_x0", "head": "softmax"})
    out = tmp_path / "l.json"
    run_script("bench/forcing_levels.py", run, "--windows", 8, "--context", 12, "--out", out,
               monkeypatch=monkeypatch)
    r = json.loads(out.read_text())
    assert [row["level"] for row in r["levels"]][0] == 7 and r["levels"][-1]["level"] == 0
    for row in r["levels"]:
        assert 0 <= row["accuracy"] <= 1 and row["ce"] >= 0 and row["ce_foreign_context"] >= 0
    assert 0 <= r["sampled_accuracy"] <= 1


def test_compute_ratio_finds_where_the_ar_curve_reaches_each_bound(tmp_path, monkeypatch):
    ar = train(tmp_path, "ar", GPT, {"name": "autoregressive"}, steps=12)
    losses = [json.loads(line)["loss"] for line in (ar / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line and "val_nelbo" not in line]
    mid = sorted(losses)[len(losses) // 2]
    method = lambda name, nats, exact: {
        "name": name, "run_dir": str(ar), "params": 1000, "exact": exact,
        "likelihood": {"nats_per_char": nats, "nats_per_token": nats, "exact": exact},
        "training": {"tokens": 10_000, "train_seconds": 100.0}}
    res = {"reference": "ar", "methods": [method("ar", min(losses), True), method("easy", 99.0, False),
                                          method("mid", mid, False), method("never", 0.0, False)]}
    (tmp_path / "results.json").write_text(json.dumps(res))
    out = tmp_path / "r.json"
    run_script("bench/compute_ratio.py", tmp_path / "results.json", "--smooth", 1, "--out", out,
               monkeypatch=monkeypatch)
    r = json.loads(out.read_text())["methods"]
    assert r["easy"]["ar_reaches_it_at"]["lower_bound"] is True          # the AR starts below it
    hit = r["mid"]["ar_reaches_it_at"]
    assert hit["lower_bound"] is False or hit["step"] == 1
    assert r["mid"]["token_ratio"] == pytest.approx(10_000 / hit["tokens"], rel=0.01)
    assert r["never"]["ar_reaches_it_at"] is None and "token_ratio" not in r["never"]
