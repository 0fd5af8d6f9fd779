"""Discoverability: ``thunderdlm config PRESET`` (the resolved config with every field's help),
``train --help`` pointing to it, and ``python -m thunderdlm``."""
import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

from thunderdlm.cli import main
from thunderdlm.run_config import RunConfig, load_config
from thunderdlm.train.config import TrainConfig


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_python_dash_m_runs_the_cli():
    res = subprocess.run([sys.executable, "-m", "thunderdlm", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage: thunderdlm" in res.stdout and "config" in res.stdout and "train" in res.stdout


def test_train_help_points_to_the_config_verb(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    assert "thunderdlm config PRESET" in capsys.readouterr().out


def test_config_prints_every_field_with_its_help_and_set_marker(capsys):
    code, out, _ = run_cli(["config", "quickstart"], capsys)
    assert code == 0
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if not line.startswith("#")}
    # every train field appears once, with its own help text
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"] in lines[f.name], f.name
    assert "# * stop after this much training wall time" in lines["max_minutes"]     # set by the preset
    assert "#   micro-batches accumulated" in lines["grad_accum"]                       # a default
    assert "[auto | fp32 | bf16]" in lines["precision"]                                 # choices


def test_config_output_is_yaml_of_the_resolved_config(capsys):
    code, out, _ = run_cli(["config", "shakespeare_char_block", "train.lr=3e-3", "train.log_to=[tensorboard]"], capsys)
    assert code == 0
    cfg = load_config("shakespeare_char_block", ["train.lr=3e-3", "train.log_to=[tensorboard]"])
    assert yaml.safe_load(out) == cfg.to_dict()          # the comments carry the help; the data is exact
    assert RunConfig.from_data(yaml.safe_load(out)) == cfg


def test_config_json_marks_set_fields_and_defaults(capsys):
    code, out, _ = run_cli(["config", "quickstart", "--json", "train.grad_accum=2"], capsys)
    assert code == 0
    doc = json.loads(out)
    fields = {f["key"]: f for f in doc["fields"]}
    assert fields["train.max_minutes"] == {**fields["train.max_minutes"], "value": 4.0, "default": 0.0, "set": True}
    assert fields["train.grad_accum"]["value"] == 2 and fields["train.grad_accum"]["set"]
    assert fields["train.beta1"]["set"] is False and fields["train.beta1"]["value"] == fields["train.beta1"]["default"]
    assert fields["train.precision"]["choices"] == ["auto", "fp32", "bf16"]
    assert fields["process.name"]["value"] == "masked" and fields["process.schedule"]["help"]
    assert doc["config"] == load_config("quickstart", ["train.grad_accum=2"]).to_dict()


@pytest.mark.parametrize("argv, message", [
    (["config", "quickstart", "train.lrr=1e-3"], "unknown config key 'train.lrr'; did you mean 'lr'?"),
    (["config", "quickstrat"], "no preset or config file named 'quickstrat'; did you mean 'quickstart'?"),
    (["config", "quickstart", "train.sample_count=0"], "config field 'train.sample_count'"),
])
def test_config_bad_input_is_one_named_line(argv, message, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_config_reads_a_run_folder_and_an_export(tmp_path, capsys):
    cfg = load_config("shakespeare_char_ar", ["out_dir=runs/x"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg.to_dict()))
    code, out, _ = run_cli(["config", str(tmp_path / "run"), "--json"], capsys)
    assert code == 0 and json.loads(out)["config"] == cfg.to_dict()
    # an export keeps the run config in thunderdlm_export.json (its config.json is transformers')
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text(json.dumps({"architectures": ["ThunderDLM"]}))
    (tmp_path / "export" / "thunderdlm_export.json").write_text(json.dumps({"run_config": cfg.to_dict()}))
    code, out, _ = run_cli(["config", str(tmp_path / "export"), "train.lr=1e-3"], capsys)
    assert code == 0 and yaml.safe_load(out) == load_config("shakespeare_char_ar", ["out_dir=runs/x", "train.lr=1e-3"]).to_dict()
