"""thunderdlm.load / generate / nll on a tiny trained run."""
import math

import pytest

import thunderdlm
from thunderdlm.errors import SamplingError
from thunderdlm.run_config import RunConfig
from thunderdlm.train import Trainer


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from thunderdlm.data import prepare_data
    root = tmp_path_factory.mktemp("api")
    (root / "c.txt").write_text("to be or not to be, that is the question. " * 200)
    data = prepare_data(root / "d", source=None, paths=[str(root / "c.txt")], tokenizer="char")
    cfg = RunConfig.from_data({"data": {"dir": str(data), "seq_len": 32},
                               "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "cond_dim": 16},
                               "train": {"batch_size": 16, "max_steps": 60, "lr": 1e-2, "eval_interval": 0,
                                         "ckpt_interval": 60, "ema_decay": 0.9}})
    Trainer(cfg, root / "run", show=False).fit()
    return thunderdlm.load(root / "run")


def test_generate_lengths_and_prompt(lm):
    texts = lm.generate("to be", length=10, n=3, steps=10, seed=0)
    assert len(texts) == 3 and all(t.startswith("to be") and len(t) == 15 for t in texts)


def test_generate_infill_keeps_known_text(lm):
    (text,) = lm.generate(infill="to [MASK:3] or not", steps=3, seed=0)
    assert text.startswith("to ") and text.endswith(" or not") and len(text) == len("to  or not") + 3


def test_loads_ema_weights(lm):
    assert lm.checkpoint.name == "step_00000060"
    assert (lm.checkpoint / "ema.safetensors").exists()


def test_nll_is_finite_and_lower_for_in_domain_text(lm):
    a, b = lm.nll(["to be or not to be, that is", "qqqqq uuuuu eeeee ttttt iiii"], t_samples=64)
    assert math.isfinite(a["nats_per_token"]) and a["stderr"] > 0
    assert a["nats_per_token"] < b["nats_per_token"]


def test_nll_rejects_too_long_text(lm):
    with pytest.raises(SamplingError, match="context"):
        lm.nll("to be " * 20)


def test_steps_must_cover_the_blocks(lm):
    with pytest.raises(SamplingError, match="blocks"):
        lm.generate(length=32, steps=2, block_length=8)


def test_load_overrides_change_sampler_settings_and_name_bad_fields(lm):
    from thunderdlm.errors import ConfigError

    other = thunderdlm.load(lm.run_dir, overrides=["process.sampling_eps=0.01"])
    assert other.cfg.process.sampling_eps == 0.01 and lm.cfg.process.sampling_eps != 0.01
    assert other.nll("to be or not")[0]["nats_per_token"] > 0
    with pytest.raises(ConfigError, match="samplng_eps"):
        thunderdlm.load(lm.run_dir, overrides=["process.samplng_eps=0.01"])


def test_load_leaves_the_callers_thread_count_alone(lm):
    import torch
    before = torch.get_num_threads()
    want = 2 if before != 2 else 1
    torch.set_num_threads(want)
    try:
        thunderdlm.load(lm.run_dir)
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
