"""Issue 19's bad-input battery, sampling / eval / API side: every case is one named error line
(exit 2) before any work, or the correct result; never a traceback, never NaN written."""
import json
import math
import os
import signal

import pytest

import thunderdlm
from thunderdlm.cli import main
from thunderdlm.errors import CheckpointError, SamplingError

@pytest.fixture(scope="module")
def run(romeo_root):
    root = romeo_root
    assert main(["train", "quickstart", "--quiet", f"data.dir={root / 'data'}", "data.seq_len=32",
                 "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.cond_dim=16",
                 "train.batch_size=8", "train.max_steps=3", "train.eval_interval=0",
                 "train.eval_windows=4", f"out_dir={root / 'run'}"]) == 0
    return root / "run"


def one_line_error(capsys, argv, *messages):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for m in messages:
        assert m in err, err
    return err


@pytest.mark.parametrize("args, message", [
    (["--length", "1000000000"], "context is 32"),
    (["--infill", "a [MASK:1000000000] b"], "more tokens than the model's context"),
    (["--steps", "100000000"], "'steps' (--steps): must be between 1 and 10,000"),
    (["--temperature", "nan"], "'temperature' (--temperature)"),
    (["--temperature", "inf"], "'temperature' (--temperature)"),
    (["--top-p", "nan"], "'top_p' (--top-p)"),
    (["--n", "0"], "'n' (--n)"),
    (["--seed", str(2**70)], "'seed' (--seed)"),
    (["--max-new-tokens", "100000000", "--prompt", "a"], "'max_new_tokens' (--max-new-tokens)"),
    (["--set", "data.seq_len=64"], "'data.seq_len': the run was trained on 32-token windows"),
])
def test_sample_bad_input_is_refused_before_work(run, capsys, args, message):
    one_line_error(capsys, ["sample", str(run), "--steps", "4", *args] if "--steps" not in args
                   else ["sample", str(run), *args], message)


def test_prompt_without_length_fills_the_rest_of_the_context(run, capsys):
    assert main(["sample", str(run), "--steps", "4", "--prompt", "ROMEO:", "--seed", "0", "--json"]) == 0
    (text,) = json.loads(capsys.readouterr().out)["samples"]
    assert text.startswith("ROMEO:") and len(text) == 32


@pytest.mark.parametrize("args, message", [
    (["--t-samples", "0"], "'t_samples' (--t-samples)"),
    (["--windows", "-1"], "'windows' (--windows)"),
    (["--samples", "-3"], "--samples must be ≥ 0"),
    (["--json", "/nonexistent/dir/x.json"], "'/nonexistent/dir' does not exist"),
    (["--set", "data.seq_len=64"], "data.seq_len"),
    (["--samples", "2", "--length", "100"], "--length 100 is longer than the model's context (32"),
    (["--samples", "2", "--steps", "100000000"], "'steps' (--steps)"),
])
def test_eval_bad_input_is_refused_before_the_evaluation(run, capsys, args, message):
    one_line_error(capsys, ["eval", str(run), *args], message)
    assert not (run / "eval.json").exists()


def test_eval_json_is_valid_json_even_with_one_t_sample(run, capsys, tmp_path):
    out = tmp_path / "e.json"
    assert main(["eval", str(run), "--t-samples", "1", "--windows", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in eval.json"))
    assert res["stderr"] is None or math.isfinite(res["stderr"])


def test_out_dir_that_is_a_file_and_eval_json_that_is_a_folder(run, capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(capsys, ["train", "quickstart", "--quiet", f"data.dir={run.parent / 'data'}",
                            "train.max_steps=1", f"out_dir={tmp_path / 'f'}"], "is a file, not a folder")
    one_line_error(capsys, ["eval", str(run), "--json", str(tmp_path)], "is a folder")


def test_read_only_folders_are_one_line(run, capsys, tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
        one_line_error(capsys, ["eval", str(run), "--json", str(tmp_path / "ro" / "e.json")], "not writable")
        one_line_error(capsys, ["data", "prepare", "--text", str(run.parent / "corpus.txt"),
                                "--out", str(tmp_path / "ro" / "d")], "Permission denied")
        one_line_error(capsys, ["train", "quickstart", "--quiet", f"data.dir={run.parent / 'data'}",
                                "train.max_steps=1", f"out_dir={tmp_path / 'ro' / 'r'}"], "Permission denied")
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_disk_full_is_one_line(run, capsys, monkeypatch):
    import errno

    from thunderdlm import checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "eval.json"))
    monkeypatch.setattr(checkpoint, "atomic_write_text", full)
    one_line_error(capsys, ["eval", str(run), "--windows", "1", "--t-samples", "1"],
                   "No space left on device", "eval.json")


def test_ctrl_c_while_sampling_is_one_line(run, capsys, monkeypatch):
    from thunderdlm import api

    def interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(api, "run_sampler", interrupted)
    assert main(["sample", str(run), "--steps", "4"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize("call, message", [
    (lambda lm: lm.generate(length="abc"), "'length' (--length): must be an integer, got 'abc'"),
    (lambda lm: lm.generate(length=8, steps=2.5), "'steps' (--steps): must be an integer"),
    (lambda lm: lm.generate(prompt=123, length=4), "'prompt' (--prompt): must be a string"),
    (lambda lm: lm.generate(length=8, n=2.0), "'n' (--n): must be an integer"),
    (lambda lm: lm.generate(length=8, seed=2**70), "'seed' (--seed)"),
    (lambda lm: lm.generate(length=8, temperature=float("inf")), "'temperature'"),
    (lambda lm: lm.generate(length=8, stop=5), "'stop'"),
    (lambda lm: lm.nll("ROMEO", t_samples=0), "'t_samples'"),
    (lambda lm: lm.nll(123), "nll() takes a text"),
    (lambda lm: lm.evaluate(windows=-1), "'windows'"),
])
def test_api_wrong_types_and_values_are_named(run, call, message):
    lm = thunderdlm.load(run)
    with pytest.raises(SamplingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(lm)


def test_load_wrong_type_is_named():
    with pytest.raises(CheckpointError, match="load\\(\\) takes a run folder path"):
        thunderdlm.load(123)
