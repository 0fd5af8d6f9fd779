import json

import pytest

from thunderdlm.config import apply_overrides, preset_names
from thunderdlm.errors import ConfigError
from thunderdlm.processes import AutoregressiveConfig, MaskedConfig
from thunderdlm.run_config import RunConfig, load_config


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_round_trips(name):
    cfg = load_config(name)
    again = RunConfig.from_data(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_overrides_are_typed():
    cfg = load_config("shakespeare_char", ["train.lr=1e-3", "train.batch_size=8", "process.time_conditioning=true",
                                           "data.seq_len=64"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 8 and cfg.process.time_conditioning is True and cfg.data.seq_len == 64


def test_polymorphic_process_section():
    assert isinstance(load_config("shakespeare_char").process, MaskedConfig)
    assert isinstance(load_config("shakespeare_char_ar").process, AutoregressiveConfig)
    cfg = load_config("shakespeare_char", ["process.name=autoregressive"])   # old variant's keys dropped
    assert isinstance(cfg.process, AutoregressiveConfig)


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key 'train.lrr'; did you mean 'lr'?"),
    ("trian.lr=1", "did you mean 'train'?"),
    ("train.batch_size=abc", "'train.batch_size': expected an integer"),
    ("train.batch_size=0", "'train.batch_size': must be ≥ 1"),
    ("process.schedule=linearr", "'process.schedule'"),
    ("process.name=maskd", "did you mean 'masked'?"),
    ("train.precision=fp8", "'train.precision'"),
    ("model.n_embd=100", "model.n_embd"),
    ("train.max_minutes=0", "train.max_steps"),
])
def test_bad_config_names_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("shakespeare_char", [override] + (["train.max_steps=0"] if "max_minutes" in override else []))
    assert message in str(e.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_preset_typo_suggests_the_preset():
    with pytest.raises(ConfigError, match="shakespeare_char"):
        load_config("shakespeare_chr")
