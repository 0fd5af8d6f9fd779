"""``thunderdlm export``: an hf-adapter run with LoRA merged, as a run folder and a transformers folder.

One tiny random Llama with a matching byte-level BPE tokenizer (trained here on a few lines) is
saved like a real pretrained folder; a masked-process run trains LoRA on it for 3 steps (EMA on,
so the export must take the EMA weights, as sampling does) and is exported once per module.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

import thunderdlm
from thunderdlm import checkpoint as ck
from thunderdlm.cli import main
from thunderdlm.data import prepare_data
from thunderdlm.errors import CheckpointError
from thunderdlm.export import EXPORT_INFO, export_run
from thunderdlm.run_config import RunConfig
from thunderdlm.runfolder import RunFolder
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


def _merged_q_proj(run_ckpt: Path, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(base W, W + scale·B·A) of Q_PROJ from the run's EMA tensors (the weights sampling uses)."""
    sd = ck.load_tensors(run_ckpt / "ema.safetensors")
    stem = f"lm.base_model.model.{Q_PROJ}"
    w, a, b = (sd[f"{stem}.base_layer.weight"], sd[f"{stem}.lora_A.default.weight"],
               sd[f"{stem}.lora_B.default.weight"])
    assert b.abs().max() > 1e-3                                   # the adapters were trained
    return w, w + scale * b @ a


def test_the_export_is_a_run_folder_with_the_same_logits_and_no_lora(exported):
    root, vocab, res = exported
    assert res.merged_lora and res.weights == "ema" and res.step == 3
    original, copy = thunderdlm.load(root / "run"), thunderdlm.load(res.out)
    assert copy.cfg.model.lora_rank == 0 and copy.cfg.model.path == str((res.out / "hf").resolve())
    assert not any("lora_" in n for n, _ in copy.model.named_parameters())
    assert any("lora_" in n for n, _ in original.model.named_parameters())
    x = torch.randint(0, vocab + 1, (2, 16), generator=torch.Generator().manual_seed(0))  # incl. masks
    with torch.no_grad():
        a, b = original.model(x, None), copy.model(x, None)
    assert a.shape == (2, 16, vocab + 1)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    files = sorted(p.name for p in copy.checkpoint.iterdir())
    assert files == ["checksums.json", "model.safetensors", "state.json"]   # no optimizer, no EMA
    state = ck.read_state(copy.checkpoint)
    assert state["step"] == 3 and state["source_weights"] == "ema" and state["merged_lora"]
    assert RunFolder(res.out).tokenizer().fingerprint() == original.tokenizer.fingerprint()
    assert (res.out / "data.json").read_text() == (root / "run" / "data.json").read_text()
    assert len(copy.generate(length=8, steps=4, seed=0)) == 1                # it samples


def test_the_hf_folder_holds_the_merged_causal_lm_and_the_tokenizer(exported):
    root, vocab, res = exported
    w, merged = _merged_q_proj(ck.latest_checkpoint(root / "run"), scale=8 / 4)
    hf = AutoModelForCausalLM.from_pretrained(res.hf_dir, local_files_only=True, dtype=torch.float32)
    assert hf.config.is_causal is False
    got = hf.get_submodule(Q_PROJ).weight.detach()
    assert not torch.allclose(got, w, atol=1e-4)                               # not the base weight
    torch.testing.assert_close(got, merged, atol=1e-6, rtol=1e-5)
    exported_sd = ck.load_tensors(ck.latest_checkpoint(res.out) / "model.safetensors")
    for name, p in hf.state_dict().items():                                    # every tensor agrees
        assert torch.equal(p, exported_sd[f"lm.{name}"]), name
    assert hf.get_input_embeddings().weight.shape[0] == vocab + 1             # the mask row kept
    own = AutoTokenizer.from_pretrained(root / "llama", local_files_only=True)
    assert AutoTokenizer.from_pretrained(res.hf_dir, local_files_only=True).get_vocab() == own.get_vocab()
    info = json.loads((res.hf_dir / EXPORT_INFO).read_text())
    assert info["process"] == "masked" and info["mask_token_id"] == vocab
    assert info["is_causal"] is False and info["shift_logits"] is False
    assert info["merged_lora"]["rank"] == 4 and info["outside_causal_lm"] == []


def test_cli_refuses_a_non_empty_out_without_force(exported, capsys):
    root, _, res = exported
    marker = res.out / "checkpoints" / "latest"
    before = marker.stat().st_mtime_ns
    assert main(["export", str(root / "run"), "--out", str(res.out)]) == 2
    assert "--force" in capsys.readouterr().err and marker.stat().st_mtime_ns == before
    assert main(["export", str(root / "run"), "--out", str(root / "run")]) == 2   # never the run itself
    assert main(["export", str(root / "run"), "--out", str(res.out), "--force"]) == 0
    assert "LoRA merged" in capsys.readouterr().out
    assert marker.stat().st_mtime_ns != before
    assert not list(root.glob(".out.export-tmp"))
    assert thunderdlm.load(res.out).checkpoint.name == "step_00000003"


def test_a_run_without_the_hf_adapter_is_refused_by_name(exported, tmp_path):
    root, _, _ = exported
    data = json.loads((root / "run" / "config.json").read_text())
    data["model"] = {"name": "ddit", "n_layer": 1, "n_head": 2, "n_embd": 16, "cond_dim": 16}
    (tmp_path / "ddit_run").mkdir()
    RunFolder(tmp_path / "ddit_run").write_config(RunConfig.from_data(data))
    with pytest.raises(CheckpointError, match=r"ddit_run.*'ddit'.*model.name: hf"):
        export_run(tmp_path / "ddit_run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_resuming_an_export_is_refused_with_a_named_error(exported):
    _, _, result = exported
    with pytest.raises(CheckpointError, match="weights only.*start a new run"):
        thunderdlm.train.resume(result.out, show=False)
