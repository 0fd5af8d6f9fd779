"""Portable run folders: a run moved elsewhere (and used from another directory) still loads, samples
and evaluates; a missing pretrained model is a named error (``thunderdlm/portable.py``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import thunderdlm
from thunderdlm.cli import main
from thunderdlm.errors import ModelLoadError
from thunderdlm.portable import resolve_data_dir, resolve_model_path
from thunderdlm.run_config import load_config
from thunderdlm.train import train

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.cond_dim=16", "data.seq_len=16",
        "train.batch_size=4", "train.max_steps=2", "train.max_minutes=0", "train.eval_interval=0",
        "train.ckpt_interval=2", "train.device=cpu"]


@pytest.fixture(scope="module")
def project(romeo_root, tmp_path_factory):
    """A run trained from inside ``romeo_root`` with the relative data.dir 'data'."""
    import os

    here = os.getcwd()
    os.chdir(romeo_root)
    try:
        train(load_config("quickstart", TINY + ["data.dir=data", "out_dir=runs/tiny"]), show=False)
    finally:
        os.chdir(here)
    return romeo_root


def test_a_moved_run_loads_samples_and_evaluates_from_another_directory(project, tmp_path, monkeypatch):
    original = thunderdlm.load(project / "runs" / "tiny")
    moved = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(project / "runs" / "tiny", tmp_path / "copy")
    shutil.move(tmp_path / "copy", moved)
    monkeypatch.chdir(tmp_path)                           # 'data' is not here
    assert json.loads((moved / "config.json").read_text())["data"]["dir"] == "data"
    lm = thunderdlm.load(moved)
    assert Path(lm.cfg.data.dir) == (project / "data").resolve()
    x = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x, None), original.model(x, None), atol=0, rtol=0)
    assert lm.generate(length=8, steps=4, seed=1) == original.generate(length=8, steps=4, seed=1)
    assert main(["eval", str(moved), "--windows", "2", "--t-samples", "1", "--json", "e.json"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["windows"] == 2


def test_a_project_moved_as_a_whole_finds_its_data_relative_to_the_run(project, tmp_path, monkeypatch):
    """Data and run moved together: data.json's absolute dir is gone, dir_from_run finds it."""
    shutil.copytree(project / "data", tmp_path / "proj" / "data")
    shutil.copytree(project / "runs" / "tiny", tmp_path / "proj" / "runs" / "tiny")
    record = json.loads((tmp_path / "proj" / "runs" / "tiny" / "data.json").read_text())
    assert record["dir_from_run"] == "../../data"
    record["dir"] = str(tmp_path / "gone")
    (tmp_path / "proj" / "runs" / "tiny" / "data.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "proj" / "runs" / "tiny"
    assert Path(resolve_data_dir("data", run)) == (tmp_path / "proj" / "data").resolve()
    assert main(["eval", str(run), "--windows", "1", "--t-samples", "1", "--json", "e.json"]) == 0


def test_a_data_folder_with_other_contents_is_not_taken(project, tmp_path, monkeypatch):
    """A 'data' folder in the current directory that is not the run's (another meta.json) is skipped."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"tokenizer": "char", "vocab_size": 3}))
    monkeypatch.chdir(tmp_path)
    assert Path(resolve_data_dir("data", project / "runs" / "tiny")) == (project / "data").resolve()


def test_model_path_falls_back_to_the_runs_copy_then_the_cache_then_names_the_field(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "lm").mkdir(parents=True)
    assert resolve_model_path(str(tmp_path / "moved" / "smollm2"), run) == str(run / "lm")
    shutil.rmtree(run / "lm")
    monkeypatch.setenv("THUNDERDLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "smollm2").mkdir(parents=True)
    assert resolve_model_path("/nowhere/smollm2", run) == str(tmp_path / "cache" / "smollm2")
    with pytest.raises(ModelLoadError, match=r"config field 'model.path'.*/nowhere/other.*tried"):
        resolve_model_path("/nowhere/other", run)
