"""Issue 19's battery, training side: Ctrl-C resumes exactly, one training per run folder, resume
overrides checked before config.json changes, checksummed checkpoints, damaged files named."""
import json
import os
import signal
import time

import pytest
import torch

import thunderdlm
from thunderdlm import checkpoint as ck
from thunderdlm.errors import CheckpointError, ConfigError, TokenizerError
from thunderdlm.run_config import RunConfig
from thunderdlm.runfolder import RunFolder
from thunderdlm.train import Trainer, resume
from thunderdlm.train.trainer import StopRequest

from .test_trainer import losses, run_until_killed


def sigint_during_step(trainer, step, times=1, apart=0.0, sig=signal.SIGINT):
    """Send real signals (SIGINT unless ``sig``) to this process from inside the loss of ``step``
    (mid-step), ``apart`` seconds apart."""
    real = trainer.process.loss

    def loss(model, x0):
        out = real(model, x0)
        if trainer.step == step:
            for i in range(times):
                if i:
                    time.sleep(apart)
                os.kill(os.getpid(), sig)
        return out
    trainer.process.loss = loss


def test_ctrl_c_then_resume_gives_the_same_losses(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=12, ckpt_interval=5)
    Trainer(cfg, tmp_path / "ref", show=False).fit()
    trainer = Trainer(cfg, tmp_path / "c", show=False)
    sigint_during_step(trainer, step=7)          # arrives inside step 8: it finishes, then stops
    summary = trainer.fit()
    assert summary.stopped_by == "interrupt" and summary.step == 8
    assert ck.read_state(ck.latest_checkpoint(tmp_path / "c"))["step"] == 8
    resume(tmp_path / "c", show=False)
    a, b = losses(tmp_path / "ref"), losses(tmp_path / "c")
    assert sorted(b) == list(range(1, 13))
    for step in range(1, 13):
        assert a[step] == b[step], f"step {step}: {a[step]} != {b[step]}"


def test_sigterm_stops_at_a_step_boundary_and_resumes_exactly(tiny_config, tmp_path):
    """A scheduler's SIGTERM (SLURM preemption, ``kill PID``) is a stop request like Ctrl-C."""
    cfg = tiny_config(max_steps=12, ckpt_interval=5)
    Trainer(cfg, tmp_path / "ref", show=False).fit()
    trainer = Trainer(cfg, tmp_path / "c", show=False)
    sigint_during_step(trainer, step=7, sig=signal.SIGTERM)
    summary = trainer.fit()
    assert summary.stopped_by == "interrupt" and summary.step == 8
    assert ck.read_state(ck.latest_checkpoint(tmp_path / "c"))["step"] == 8
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL                  # handler restored
    resume(tmp_path / "c", show=False)
    assert losses(tmp_path / "ref") == losses(tmp_path / "c")


def test_someone_elses_sigterm_handler_is_left_alone(tiny_config, tmp_path):
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda *a: calls.append(a))
    try:
        trainer = Trainer(tiny_config(max_steps=12, ckpt_interval=5), tmp_path / "c", show=False)
        sigint_during_step(trainer, step=7, sig=signal.SIGTERM)
        assert trainer.fit().step == 12 and len(calls) == 1                    # not a stop request
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_second_ctrl_c_stops_at_once_without_an_inexact_checkpoint(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=12, ckpt_interval=5)
    Trainer(cfg, tmp_path / "ref", show=False).fit()
    trainer = Trainer(cfg, tmp_path / "c", show=False)
    sigint_during_step(trainer, step=7, times=2, apart=StopRequest.REPEAT_S + 0.1)
    summary = trainer.fit()
    assert summary.stopped_by == "interrupt" and summary.step == 7
    assert ck.read_state(ck.latest_checkpoint(tmp_path / "c"))["step"] == 5   # the boundary one
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler       # handler restored
    resume(tmp_path / "c", show=False)
    assert losses(tmp_path / "ref") == losses(tmp_path / "c")


def test_a_repeated_signal_within_the_window_is_the_same_ctrl_c(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(max_steps=12, ckpt_interval=5), tmp_path / "c", show=False)
    sigint_during_step(trainer, step=7, times=2)     # the terminal's SIGINT and torchrun's forward
    assert trainer.fit().step == 8
    assert ck.read_state(ck.latest_checkpoint(tmp_path / "c"))["step"] == 8


def test_one_training_per_run_folder(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=5)
    first = Trainer(cfg, tmp_path / "r", show=False)            # holds the lock until fit() ends
    with pytest.raises(CheckpointError, match=f"in use by another training \\(pid {os.getpid()}\\)"):
        Trainer(cfg, tmp_path / "r", show=False)
    first.fit()
    with pytest.raises(CheckpointError, match="in use"):
        held = RunFolder(tmp_path / "r").claim(new=False)
        try:
            resume(tmp_path / "r", ["train.max_steps=8"], show=False)
        finally:
            held.release()
    assert resume(tmp_path / "r", ["train.max_steps=8"], show=False).step == 8


def test_a_lock_left_by_a_killed_process_does_not_block(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=10, ckpt_interval=5)
    run_until_killed(cfg, tmp_path / "k", kill_step=7)
    (tmp_path / "k" / ".lock").write_text("999999\n")            # a dead holder's pid
    assert resume(tmp_path / "k", show=False).step == 10


@pytest.mark.parametrize("override, field", [("model.n_layer=2", "model.n_layer"),
                                             ("data.seq_len=32", "data.seq_len"),
                                             ("process.name=uniform", "process.name")])
def test_resume_refuses_a_new_shape_and_keeps_config_json(tiny_config, tmp_path, override, field):
    cfg = tiny_config(max_steps=5)
    Trainer(cfg, tmp_path / "r", show=False).fit()
    before = (tmp_path / "r" / "config.json").read_bytes()
    with pytest.raises(ConfigError, match=f"'{field}' cannot change when resuming"):
        resume(tmp_path / "r", [override, "train.max_steps=8"], show=False)
    assert (tmp_path / "r" / "config.json").read_bytes() == before
    thunderdlm.load(tmp_path / "r")                               # still loads


def test_resume_with_another_tokenizer_keeps_config_json(tiny_config, tmp_path):
    from thunderdlm.data import prepare_data
    Trainer(tiny_config(max_steps=5), tmp_path / "r", show=False).fit()
    before = (tmp_path / "r" / "config.json").read_bytes()
    (tmp_path / "o.txt").write_text("completely different: XYZ 0123456789 " * 300)
    other = prepare_data(tmp_path / "od", source=None, paths=[str(tmp_path / "o.txt")], tokenizer="char")
    with pytest.raises(TokenizerError, match="differs"):
        resume(tmp_path / "r", [f"data.dir={other}", "train.max_steps=10"], show=False)
    assert (tmp_path / "r" / "config.json").read_bytes() == before
    resume(tmp_path / "r", ["train.max_steps=7"], show=False)     # a valid override is written
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["max_steps"] == 7


def test_training_into_a_folder_that_is_not_a_run_is_refused(tiny_config, tmp_path):
    (tmp_path / "u" / "tokenizer").mkdir(parents=True)
    (tmp_path / "u" / "tokenizer" / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="'.*u' exists and is not a thunderdlm run folder"):
        Trainer(tiny_config(max_steps=3), tmp_path / "u", show=False)
    assert (tmp_path / "u" / "tokenizer" / "notes.txt").read_text() == "x"
    (tmp_path / "f").write_text("a file")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        Trainer(tiny_config(max_steps=3), tmp_path / "f", show=False)
    (tmp_path / "empty").mkdir()
    assert Trainer(tiny_config(max_steps=3), tmp_path / "empty", show=False).fit().step == 3


def test_flipped_bytes_fail_the_checksum_and_fall_back(tiny_config, tmp_path, capsys):
    Trainer(tiny_config(max_steps=10, ckpt_interval=5), tmp_path / "r", show=False).fit()
    newest = ck.latest_checkpoint(tmp_path / "r")
    assert json.loads((newest / ck.CHECKSUMS).read_text())["model.safetensors"]
    path = newest / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-40:-8] = bytes(b ^ 0xFF for b in raw[-40:-8])           # inside the tensor data: still parses
    path.write_bytes(bytes(raw))
    assert "checksum" in ck.checkpoint_problem(newest)
    assert thunderdlm.load(tmp_path / "r").checkpoint.name == "step_00000005"
    assert "skipped the damaged checkpoint step_00000010" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="step_00000010.*checksum"):
        thunderdlm.load(tmp_path / "r", checkpoint="step_00000010")


def test_non_finite_weights_without_a_checksum_fall_back(tiny_config, tmp_path):
    from safetensors.torch import save_file
    Trainer(tiny_config(max_steps=10, ckpt_interval=5), tmp_path / "r", show=False).fit()
    newest = ck.latest_checkpoint(tmp_path / "r")
    weights = ck.load_tensors(newest / "model.safetensors")
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name].clone().fill_(float("nan"))
    save_file(weights, str(newest / "model.safetensors"))
    (newest / ck.CHECKSUMS).unlink()                        # a checkpoint written before checksums
    assert "NaN" in ck.checkpoint_problem(newest)
    assert thunderdlm.load(tmp_path / "r").checkpoint.name == "step_00000005"


def test_the_non_finite_loss_message_names_a_checkpoint_that_exists(tiny_config, tmp_path):
    from thunderdlm.errors import TrainingError
    trainer = Trainer(tiny_config(max_steps=10, ckpt_interval=5, max_bad_steps=0), tmp_path / "r", show=False)
    real = trainer.process.loss

    def poisoned(model, x0):
        out = real(model, x0)
        out.loss = out.loss * float("nan")
        return out
    trainer.process.loss = poisoned
    with pytest.raises(TrainingError, match="max_bad_steps=0.*no checkpoint was written yet"):
        trainer.fit()


def test_damaged_run_files_are_named(tiny_config, tmp_path):
    Trainer(tiny_config(max_steps=10, ckpt_interval=5), tmp_path / "r", show=False).fit()
    metrics = tmp_path / "r" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 11, "lo')           # a kill during a write
    assert resume(tmp_path / "r", ["train.max_steps=12"], show=False).step == 12
    newest = ck.latest_checkpoint(tmp_path / "r")
    (newest / "optimizer.json").write_text("garbage")
    (newest / ck.CHECKSUMS).unlink()                                      # no checksum to catch it
    with pytest.raises(CheckpointError, match="optimizer.json"):
        resume(tmp_path / "r", ["train.max_steps=14"], show=False)
    config = tmp_path / "r" / "config.json"
    for raw in (b"\xff\xfe not utf-8", b"[1, 2]"):
        config.write_bytes(raw)
        with pytest.raises(CheckpointError, match="config.json"):
            thunderdlm.load(tmp_path / "r")


@pytest.mark.parametrize("key, value", [("eval_interval", -1), ("max_minutes", -1.0),
                                        ("warmup_steps", -5), ("max_bad_steps", -1),
                                        ("eval_windows", 0), ("lr", float("nan")),
                                        ("device", "cuda:99")])
def test_bad_train_settings_name_their_field(tiny_config, tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"train.{key}|device 'cuda:99'"):
        cfg = tiny_config(**{key: value})
        Trainer(cfg, tmp_path / "r", show=False)


def test_a_full_disk_during_a_checkpoint_is_named_and_keeps_the_last_one(tiny_config, tmp_path, monkeypatch):
    from safetensors import SafetensorError
    trainer = Trainer(tiny_config(max_steps=10, ckpt_interval=5), tmp_path / "r", show=False)
    real = ck.save_file

    def full(tensors, path, metadata=None):
        if trainer.step == 10:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, metadata=metadata)
    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(CheckpointError, match=r"checkpoint of step 10 failed .*No space left on device.*"
                                              r"step_00000005', is kept"):
        trainer.fit()
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["latest", "step_00000005"]
    monkeypatch.undo()
    assert resume(tmp_path / "r", show=False).step == 10        # the lock was released too
