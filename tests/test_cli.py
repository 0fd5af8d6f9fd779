"""The command line end to end on a tiny corpus, and its one-line errors for bad input."""
import json

import pytest

from thunderdlm.cli import main

@pytest.fixture(scope="module")
def workspace(romeo_root):
    root = romeo_root
    cfg = root / "tiny.yaml"
    cfg.write_text(f"""
data: {{dir: {root / 'data'}, seq_len: 32}}
model: {{name: ddit, n_layer: 1, n_head: 2, n_embd: 16, cond_dim: 16}}
train: {{batch_size: 8, max_steps: 6, eval_interval: 3, ckpt_interval: 3, eval_windows: 4}}
out_dir: {root / 'run'}
""")
    assert main(["train", str(cfg), "--quiet", "train.lr=2e-3"]) == 0  # overrides after options
    return root


def test_train_writes_a_complete_run_folder(workspace):
    run = workspace / "run"
    for name in ("config.json", "data.json", "metrics.jsonl", "tokenizer", "checkpoints/latest"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 2e-3


def test_resume_extends_the_budget(workspace, capsys):
    assert main(["train", "--resume", str(workspace / "run"), "train.max_steps=9", "--quiet"]) == 0
    assert "9 steps" in capsys.readouterr().out


def test_sample_prompt_and_infill(workspace, capsys):
    assert main(["sample", str(workspace / "run"), "--steps", "8", "--length", "20", "--prompt", "ROMEO:",
                 "--seed", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples"][0].startswith("ROMEO:") and len(out["samples"][0]) == 26
    assert main(["sample", str(workspace / "run"), "--steps", "4", "--infill", "It is [MASK:5] east",
                 "--remasking", "low_confidence", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["samples"][0]
    assert s.startswith("It is ") and s.endswith(" east") and len(s) == len("It is ") + 5 + len(" east")


def test_sample_same_seed_same_text(workspace, capsys):
    args = ["sample", str(workspace / "run"), "--steps", "8", "--length", "24", "--seed", "5", "--json"]
    main(args)
    a = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == a


def test_live_display_prints_snapshots_without_a_terminal(workspace, capsys):
    assert main(["sample", str(workspace / "run"), "--steps", "8", "--length", "16", "--live", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "step 2/8" in out and "step 8/8" in out and "▒" in out


def test_eval_writes_json(workspace, capsys):
    assert main(["eval", str(workspace / "run"), "--t-samples", "2"]) == 0
    res = json.loads((workspace / "run" / "eval.json").read_text())
    assert res["nats_per_token"] > 0 and res["stderr"] > 0 and res["t_samples"] == 2
    assert "bits/char" in capsys.readouterr().out


def test_set_changes_the_stored_config_for_eval_and_sample(workspace, capsys):
    """eval and sample accept --set KEY=VALUE (the API test checks it reaches the config); a
    misspelt key is one named error line, not a traceback."""
    run = str(workspace / "run")
    out = workspace / "eval_set.json"
    assert main(["eval", run, "--t-samples", "2", "--set", "process.loss_estimator=ratio",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["nats_per_token"] > 0
    assert main(["sample", run, "--steps", "4", "--length", "12", "--set", "process.sampling_eps=0.01"]) == 0
    capsys.readouterr()
    assert main(["sample", run, "--steps", "4", "--set", "process.samplng_eps=0.01"]) == 2
    assert "samplng_eps" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "shakespeare_char", "train.lrr=1"], "did you mean 'lr'"),
    (["train", "shakespeare_char", "train.batch_size=many"], "train.batch_size"),
    (["train", "shakespeare_char", "model.name=gtp"], "did you mean 'gpt'"),
    (["train", "shakespeare_chr"], "did you mean 'shakespeare_char'"),
    (["train", "shakespeare_char", "data.dir=/nonexistent/data"], "/nonexistent/data"),
    (["sample", "/nonexistent/run"], "not a thunderdlm run folder"),
    (["data", "prepare", "--text", "/nonexistent/file.txt"], "/nonexistent/file.txt"),
])
def test_bad_input_gets_a_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_prompt_longer_than_context(workspace, capsys):
    assert main(["sample", str(workspace / "run"), "--prompt", "ROMEO: " * 10, "--length", "8"]) == 2
    assert "context is 32" in capsys.readouterr().err


def test_characters_outside_the_vocabulary_are_rejected(workspace, capsys):
    assert main(["sample", str(workspace / "run"), "--prompt", "Zq€", "--length", "4"]) == 2
    err = capsys.readouterr().err
    assert "€" in err


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    assert main(["data", "prepare", "--text", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "d")]) == 2
    assert "empty" in capsys.readouterr().err
