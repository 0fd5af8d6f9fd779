"""Trackers (train.log_to: TensorBoard, W&B offline) and periodic samples (train.sample_interval).

What is checked: the trackers receive the same numbers as metrics.jsonl at the same steps; a
killed-and-resumed run shows each step once with the uninterrupted run's losses (TensorBoard's
purge_step, W&B's stored run id); periodic samples are written and leave the training trajectory
bit-identical to a run without them.
"""
import importlib.util
import json
import struct

import pytest
import torch

from thunderdlm import checkpoint as ck
from thunderdlm.errors import ConfigError
from thunderdlm.train import Trainer, resume
from thunderdlm.train.tracking import sample_file

from .test_trainer import losses, run_until_killed


@pytest.fixture(autouse=True)
def wandb_offline(monkeypatch, tmp_path):
    """W&B must never reach for a network or a login here, nor write outside tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def tensorboard_scalars(run_dir, tag: str) -> dict[int, float]:
    """step → value of ``tag`` as TensorBoard shows it (purged events dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: a step shown twice: {steps}"
    return {e.step: e.value for e in events}


def wandb_history(run_file) -> list[dict]:
    """The history rows of an offline W&B run file (``run-ID.wandb``): a 7-byte W&B header, then
    LevelDB-log records (32 KiB blocks; each chunk: crc32, length u16, type u8 — 1 full, 2 first,
    3 middle, 4 last) holding protobuf ``Record`` messages. Read here so no network is needed."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, rows = run_file.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:                                   # a block's tail too short for a header
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:                  # zero padding up to the next block
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard not installed (pip install 'thunderdlm[track]')")
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="wandb not installed (pip install 'thunderdlm[track]')")


@needs_tensorboard
def test_tensorboard_gets_the_logged_losses_and_evaluations(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=6, eval_interval=3, log_to=["tensorboard"])
    Trainer(cfg, tmp_path / "run", show=False).fit()
    logged = losses(tmp_path / "run")
    shown = tensorboard_scalars(tmp_path / "run", "train/loss")
    assert sorted(shown) == list(range(1, 7))
    for step, loss in logged.items():      # event files store float32
        assert shown[step] == pytest.approx(loss, rel=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_nelbo"] for r in rows if "val_nelbo" in r}
    assert sorted(val) == [3, 6]
    assert tensorboard_scalars(tmp_path / "run", "val/nelbo") == pytest.approx(val, rel=1e-6)
    assert set(tensorboard_scalars(tmp_path / "run", "train/lr")) == set(range(1, 7))


@needs_tensorboard
def test_tensorboard_resume_shows_each_step_once_with_the_uninterrupted_losses(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=12, ckpt_interval=5, log_to=["tensorboard"])
    Trainer(cfg, tmp_path / "ref", show=False).fit()
    run_until_killed(cfg, tmp_path / "k", kill_step=8)     # steps 6-8 logged, then lost
    resume(tmp_path / "k", show=False)
    assert len(list((tmp_path / "k" / "tensorboard").glob("events.*"))) == 2
    ref, k = tensorboard_scalars(tmp_path / "ref", "train/loss"), tensorboard_scalars(tmp_path / "k", "train/loss")
    assert sorted(k) == list(range(1, 13))
    assert k == ref


@needs_wandb
def test_wandb_offline_run_holds_the_metrics_and_resume_keeps_its_id(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=8, ckpt_interval=4, log_to=["wandb"], wandb_project="tests")
    run_until_killed(cfg, tmp_path / "run", kill_step=6)
    run_id = json.loads((tmp_path / "run" / "wandb.json").read_text())["id"]
    resume(tmp_path / "run", show=False)
    import wandb

    wandb.teardown()       # run.finish() returns before W&B's service process has written the file
    files = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)
    assert not (tmp_path / "wandb_home").exists()                  # the run folder, not WANDB_DIR
    # two sessions started within one second are named ...-ID and ...-ID-1: order them by first step
    first, second = sorted(({r["_step"]: r["train/loss"] for r in wandb_history(f)} for f in files), key=min)
    logged = losses(tmp_path / "run")
    assert first == {s: logged[s] for s in range(1, 7)}
    assert second == {s: logged[s] for s in range(5, 9)}                # resumed at the step-4 checkpoint


def test_missing_tracker_package_is_a_named_error(tiny_config, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train\.log_to.*wandb.*thunderdlm\[track\]"):
        Trainer(tiny_config(log_to=["wandb"]), tmp_path / "run", show=False)
    assert not (tmp_path / "run").exists()                         # refused before the folder


@pytest.mark.parametrize("log_to, message", [(["tensorbord"], "not a tracker"),
                                             (["wandb", "wandb"], "twice")])
def test_bad_tracker_names_are_named_errors(tiny_config, log_to, message):
    with pytest.raises(ConfigError, match=rf"train\.log_to.*{message}"):
        tiny_config(log_to=log_to)


def test_log_to_accepts_a_comma_separated_override():
    from thunderdlm.run_config import load_config

    cfg = load_config("quickstart", ["train.log_to=tensorboard,wandb"])
    assert cfg.train.log_to == ["tensorboard", "wandb"]


@needs_tensorboard
def test_periodic_samples_are_written_and_leave_training_bit_identical(tiny_config, tmp_path):
    base = dict(max_steps=8, ckpt_interval=8, ema_decay=0.9)   # the EMA copy's init draws from the RNG
    plain = tiny_config(**base)
    Trainer(plain, tmp_path / "plain", show=False).fit()
    sampled = tiny_config(**base, sample_interval=3, sample_count=2, sample_length=12, sample_steps=4,
                          log_to=["tensorboard"])
    trainer = Trainer(sampled, tmp_path / "sampled", show=False)
    drawn = []
    original = trainer.sample
    trainer.sample = lambda: drawn.append(original()) or drawn[-1]
    trainer.fit()
    assert losses(tmp_path / "plain") == losses(tmp_path / "sampled")
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = ck.load_tensors(ck.latest_checkpoint(tmp_path / "plain") / name)
        b = ck.load_tensors(ck.latest_checkpoint(tmp_path / "sampled") / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [len(texts) for texts in drawn] == [2, 2]               # at steps 3 and 6
    for step, texts in zip((3, 6), drawn):
        text = sample_file(tmp_path / "sampled", step).read_text()
        assert all(len(t) == 12 and t in text for t in texts)       # char tokenizer: 12 characters
    assert not sample_file(tmp_path / "sampled", 8).exists()
    assert trainer.raw_model.training                               # back in train mode

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "sampled" / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    shown = {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors("samples/text_summary")}
    assert sorted(shown) == [3, 6] and all(line in shown[6] for t in drawn[1] for line in t.splitlines())


def test_periodic_evaluation_with_the_ema_leaves_training_bit_identical(tiny_config, tmp_path):
    base = dict(max_steps=6, ckpt_interval=6, ema_decay=0.9)
    Trainer(tiny_config(**base), tmp_path / "plain", show=False).fit()
    Trainer(tiny_config(**base, eval_interval=2), tmp_path / "evaluated", show=False).fit()
    assert losses(tmp_path / "plain") == losses(tmp_path / "evaluated")


def test_periodic_samples_are_the_same_seed_every_time(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=4, ckpt_interval=4, sample_interval=2, sample_count=3, sample_steps=4)
    trainer = Trainer(cfg, tmp_path / "run", show=False)
    trainer.fit()
    assert trainer.sample() == trainer.sample()                     # same weights, same seed
    assert sample_file(tmp_path / "run", 2).exists() and sample_file(tmp_path / "run", 4).exists()


def test_sample_length_past_the_context_is_a_named_error(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.sample_length"):
        Trainer(tiny_config(sample_length=17), tmp_path / "run", show=False)   # seq_len is 16


@pytest.mark.distributed
@needs_tensorboard
def test_under_ddp_only_rank_0_tracks_and_samples(tiny_data, tmp_path):
    from .test_distributed import _check_ddp_worker

    train = {"batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "max_steps": 4, "eval_interval": 2,
             "eval_windows": 8, "ckpt_interval": 2, "log_interval": 1, "log_to": ["tensorboard"],
             "sample_interval": 2, "sample_count": 2, "sample_steps": 4, "ema_decay": 0.9}
    _check_ddp_worker(tiny_data, tmp_path, {"train": train})   # the ranks' weights stay identical
    run = tmp_path / "run"
    assert len(list((run / "tensorboard").glob("events.*"))) == 1
    assert sorted(tensorboard_scalars(run, "train/loss")) == [1, 2, 3, 4]
    assert sample_file(run, 2).exists() and sample_file(run, 4).exists()
