"""``thunderdlm export`` of an hf-adapter LoRA run: the network with its adapters unmerged, the base +
peft adapter, the refusals and the atomic replacement (every family against plain transformers:
test_hf_export.py).

One tiny random Llama with a matching byte-level BPE tokenizer (trained here on a few lines) is
saved like a real pretrained folder; a masked-process run trains LoRA on it for 3 steps (EMA on,
so the export must take the EMA weights, as sampling does) and is exported once per module.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import thunderdlm
from thunderdlm import checkpoint as ck
from thunderdlm.cli import main
from thunderdlm.data import prepare_data
from thunderdlm.errors import CheckpointError
from thunderdlm.export import export_run
from thunderdlm.run_config import RunConfig
from thunderdlm.train import train

from tests.tiny_pretrained import LINES, tiny_pretrained

Q_PROJ = "model.layers.3.self_attn.q_proj"     # an upper layer: LoRA-adapted under freeze_layers=half


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    vocab = tiny_pretrained(root / "llama")
    (root / "corpus.txt").write_text("\n".join(LINES * 40))
    data = prepare_data(root / "data", source=None, paths=[str(root / "corpus.txt")], tokenizer="hf",
                        hf_path=str(root / "llama"))
    cfg = RunConfig.from_data({
        "data": {"dir": str(data), "seq_len": 16},
        "model": {"name": "hf", "path": str(root / "llama"), "lora_rank": 4, "lora_alpha": 8,
                  "freeze_layers": "half", "time_conditioning": False},
        "process": {"name": "masked", "time_conditioning": False},
        "train": {"batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "max_steps": 3, "ckpt_interval": 3,
                  "eval_interval": 0, "eval_windows": 2, "ema_decay": 0.5, "device": "cpu"},
        "seed": 3, "out_dir": str(root / "run")})
    train(cfg, show=False)
    result = export_run(root / "run", root / "out")
    return root, vocab, result


def _ema(root: Path) -> dict[str, torch.Tensor]:
    """The run's EMA tensors (the weights sampling uses)."""
    return ck.load_tensors(ck.latest_checkpoint(root / "run") / "ema.safetensors")


def test_the_export_holds_the_runs_weights_with_lora_unmerged_and_equal_logits(exported):
    root, vocab, res = exported
    assert res.lora and res.weights == "ema" and res.step == 3
    original = thunderdlm.load(root / "run")                 # the EMA weights, as sampling uses
    ours, saved = original.model.state_dict(), ck.load_tensors(res.out / "model.safetensors")
    assert saved.keys() == {f"network.{k}" for k in ours} == {f"network.{k}" for k in _ema(root)}
    assert all(torch.equal(saved[f"network.{k}"], v) for k, v in ours.items())       # bit for bit
    assert ours[f"lm.base_model.model.{Q_PROJ}.lora_B.default.weight"].abs().max() > 1e-3
    config = json.loads((res.out / "config.json").read_text())
    assert config["lora"]["rank"] == 4 and config["lora"]["scaling"] == 2.0
    assert Q_PROJ in config["lora"]["modules"] and not any(".layers.0." in m for m in config["lora"]["modules"])
    copy = thunderdlm.load(res.out)
    assert copy.cfg.model.lora_rank == 4 and Path(copy.cfg.model.path) == res.out / "lm"
    x = torch.randint(0, vocab + 1, (2, 16), generator=torch.Generator().manual_seed(0))  # incl. masks
    with torch.no_grad():
        a, b = original.model(x, None), copy.model(x, None)
    assert a.shape == (2, 16, vocab + 1)
    torch.testing.assert_close(b, a, atol=0, rtol=0)
    assert copy.tokenizer.fingerprint() == original.tokenizer.fingerprint()
    assert (res.out / "data.json").read_text() == (root / "run" / "data.json").read_text()
    assert len(copy.generate(length=8, steps=4, seed=0)) == 1                # it samples


def test_lm_holds_the_unmerged_base_and_the_tokenizer_with_the_mask_token(exported):
    root, vocab, res = exported
    w = _ema(root)[f"lm.base_model.model.{Q_PROJ}.base_layer.weight"]
    base = AutoModelForCausalLM.from_pretrained(res.out / "lm", local_files_only=True, dtype=torch.float32)
    assert base.config.is_causal is False
    torch.testing.assert_close(base.get_submodule(Q_PROJ).weight.detach(), w, atol=0, rtol=0)
    assert base.get_input_embeddings().weight.shape[0] == vocab + 1             # the mask row kept
    for folder in (res.out, res.out / "lm"):
        tok = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
        assert tok.mask_token == "<|mask|>" and tok.mask_token_id == vocab and len(tok) == vocab + 1
    assert "not as a left-to-right LM" in (res.out / "lm" / "README.md").read_text()
    adapter = json.loads((res.out / "lora" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and adapter["base_model_name_or_path"] == "../lm"
    info = json.loads((res.out / "thunderdlm_export.json").read_text())
    assert info["process"] == "masked" and info["noise_token_id"] == vocab and info["lora"]
    gen = json.loads((res.out / "generation_config.json").read_text())
    assert gen["mask_token_id"] == vocab


def test_cli_refuses_a_non_empty_out_without_force(exported, capsys):
    root, _, res = exported
    marker = res.out / "model.safetensors"
    before = marker.stat().st_mtime_ns
    assert main(["export", str(root / "run"), "--out", str(res.out)]) == 2
    assert "--force" in capsys.readouterr().err and marker.stat().st_mtime_ns == before
    assert main(["export", str(root / "run"), "--out", str(root / "run")]) == 2   # never the run itself
    assert main(["export", str(root / "run"), "--out", str(res.out), "--force"]) == 0
    assert "LoRA adapters kept unmerged" in capsys.readouterr().out
    assert marker.stat().st_mtime_ns != before
    assert not list(root.glob(".out.tmp-*"))
    assert thunderdlm.load(res.out).checkpoint == res.out


def test_resuming_an_export_is_refused_with_a_named_error(exported):
    _, _, result = exported
    with pytest.raises(CheckpointError, match="is an export.*weights only.*start a new run"):
        thunderdlm.train.resume(result.out, show=False)
