"""``thunderdlm export`` for every backbone and process family, checked in plain transformers.

Each family (a preset with tiny overrides) trains for 3 steps at a high learning rate (DDiT's
zero-initialised gates and output layer must move, or every logit is 0 and any export would
"match"), is exported, and a fresh Python process that imports only torch and transformers loads
it with ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` and ``AutoTokenizer`` and
compares its outputs with thunderdlm's on inputs saved here (ids with mask / BOS ids, noise levels,
padding, block-causal masks, continuous latents) to 1e-5; it also checks the tokenizer (ids of a
text, the decoded text, the mask / BOS id) and that no thunderdlm module was imported.
"""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import thunderdlm
from thunderdlm.data import prepare_data
from thunderdlm.export import export_run
from thunderdlm.hf_export import hf_config
from thunderdlm.loading import load_run
from thunderdlm.processes.block.attention import block_causal, training_mask, training_positions
from thunderdlm.run_config import load_config
from thunderdlm.train import train

from tests.tiny_pretrained import LINES, tiny_pretrained

TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\n"
        "It is the east, and Juliet is the sun.\n\n")
TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.cond_dim=16",
        "data.seq_len=32", "train.batch_size=4", "train.max_steps=3", "train.max_minutes=0",
        "train.lr=2e-2", "train.warmup_steps=1", "train.eval_interval=0", "train.ckpt_interval=3",
        "train.device=cpu", "train.log_interval=1"]

#: family -> (preset, tokenizer kind, extra overrides)
FAMILIES = {
    "masked_ddit": ("quickstart", "char", []),
    "uniform_gpt_word": ("note002_ldlm", "word", ["train.batch_size=4"]),
    "sedd_absorb_ddit_bpe": ("shakespeare_char_sedd_absorb", "bpe", []),
    "ar_gpt": ("shakespeare_char_ar", "char", []),
    "block_ddit": ("shakespeare_char_block", "char", []),
    "embedding_ddit": ("shakespeare_char_embedding", "char", ["process.latent_dim=8"]),
    "embedding_regression": ("note000_embedding", "char", []),
    "forcing_gpt": ("shakespeare_char_df", "char", ["process.level_embedding=mlp"]),
}

# ---- the fresh process: torch + transformers only ------------------------------------------------------

CHECK = r'''
import json, sys, torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
results = {}
for d, probe in json.loads(sys.argv[1]).items():
    model = AutoModel.from_pretrained(d, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(d, trust_remote_code=True)
    p = torch.load(probe, weights_only=True)
    diffs = []
    with torch.no_grad():
        for kwargs, expected in zip(p["calls"], p["expected"]):
            diffs.append(float((model(**kwargs).logits - expected).abs().max()))
    if model.config.process == "masked":     # the masked-LM auto class: the same network
        mlm = AutoModelForMaskedLM.from_pretrained(d, trust_remote_code=True).eval()
        with torch.no_grad():
            diffs.append(float((mlm(**p["calls"][0]).logits - p["expected"][0]).abs().max()))
    text = p["text"]
    try:
        x = model.generate(max_new_tokens=8, steps=4, temperature=0)
        generated = {"shape": list(x.shape), "masks_left": int((x == model.config.mask_token_id).sum())}
    except ValueError as e:
        generated = {"refused": str(e)}
    results[d] = {"generated": generated, "diffs": diffs, "ids": tok.encode(text, add_special_tokens=False),
                  "decoded": tok.decode(p["ids"], skip_special_tokens=False),
                  "mask_token_id": tok.mask_token_id, "vocab": len(tok),
                  "special": tok.convert_ids_to_tokens(p["special"]) if p["special"] is not None else None}
results["thunderdlm_imported"] = sorted(m for m in sys.modules if m.startswith("thunderdlm"))
print("RESULT" + json.dumps(results))
'''


def run_fresh(probes: dict[str, str], cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHECK, json.dumps(probes)], cwd=cwd, text=True,
                         capture_output=True, timeout=600, stdin=subprocess.DEVNULL,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                              "HOME": str(Path.home()), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT", 1)[1])


def calls_for(lm) -> tuple[list[dict], list[torch.Tensor]]:
    """Inputs for the exported model and thunderdlm's outputs on them: the probe batch, and for
    token networks also padding and (block diffusion) the block-causal and x_t ⊕ x0 patterns."""
    kwargs, out = hf_config.probe(lm, seed=1)
    calls, expected = [kwargs], [out]
    ids = kwargs.get("input_ids")
    net = lm.model
    with torch.no_grad():
        if ids is not None:
            sigma = kwargs["timesteps"]
            valid = torch.ones_like(ids, dtype=torch.bool)
            valid[1, -5:] = False                                      # right padding in row 1
            calls.append({"input_ids": ids, "timesteps": sigma, "attention_mask": valid.long()})
            expected.append(net(ids, sigma, valid=valid))
            per_token = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2))
            calls.append({"input_ids": ids, "timesteps": per_token})
            expected.append(net(ids, per_token))
        if lm.process.name == "block":
            L, bs = ids.shape[1], lm.cfg.process.block_size
            pos = torch.arange(L)
            mask = block_causal(pos, pos, bs)
            calls.append({"input_ids": ids, "timesteps": sigma, "attention_mask": mask[None, None]})
            expected.append(net(ids, sigma, attn_mask=mask))
            half = L // 2
            both = torch.cat([ids[:, :half], ids[:, :half].clamp(max=lm.tokenizer.vocab_size - 1)], 1)
            m2, p2 = training_mask(half, bs), training_positions(half)
            calls.append({"input_ids": both, "timesteps": sigma, "attention_mask": m2[None, None],
                          "position_ids": p2})
            expected.append(net(both, sigma, attn_mask=m2, positions=p2))
    return calls, expected


def save_probe(lm, path: Path) -> dict:
    calls, expected = calls_for(lm)
    ids = torch.randint(0, lm.tokenizer.vocab_size, (20,), generator=torch.Generator().manual_seed(3))
    special = lm.process.model_vocab_size - 1 if lm.process.model_vocab_size > lm.tokenizer.vocab_size else None
    torch.save({"calls": calls, "expected": expected, "text": TEXT, "ids": ids.tolist(),
                "special": special}, path)
    return {"text_ids": lm.tokenizer.encode(TEXT), "decoded": lm.tokenizer.decode(ids.tolist()),
            "special": special}


# ---- runs ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfx_data")
    (root / "corpus.txt").write_text(TEXT * 60)
    return root, {kind: prepare_data(root / kind, source=None, paths=[str(root / "corpus.txt")],
                                     tokenizer=kind, vocab_size=300 if kind == "bpe" else None)
                  for kind in ("char", "word", "bpe")}


def train_family(root: Path, data: Path, name: str) -> Path:
    preset, _, extra = FAMILIES[name]
    cfg = load_config(preset, TINY + extra + [f"data.dir={data}", f"out_dir={root / name}"])
    train(cfg, show=False)
    return root / name


@pytest.fixture(scope="module")
def exported(corpora):
    root, datas = corpora
    out = {}
    for name, (_, kind, _) in FAMILIES.items():
        run = train_family(root, datas[kind], name)
        res = export_run(run, root / f"{name}_export")
        lm = load_run(run, device="cpu")
        out[name] = (run, res, lm, save_probe(lm, root / f"{name}.pt"))
    return root, out


@pytest.mark.slow
def test_every_family_reloads_in_plain_transformers_with_equal_outputs(exported):
    root, runs = exported
    probes = {str(res.out): str(root / f"{name}.pt") for name, (_, res, _, _) in runs.items()}
    results = run_fresh(probes, root)
    assert results.pop("thunderdlm_imported") == []
    for name, (run, res, lm, ours) in runs.items():
        got = results[str(res.out)]
        assert max(got["diffs"]) <= 1e-5, (name, got["diffs"])
        assert res.max_abs_diff <= 1e-5
        assert got["ids"] == ours["text_ids"], name
        assert got["decoded"] == ours["decoded"], name
        if lm.process.name in ("masked", "block"):
            assert got["generated"] == {"shape": [1, 8], "masks_left": 0}, name
        else:                                   # no silent left-to-right decoding: a named refusal
            assert "thunderdlm sample" in got["generated"]["refused"], name
        role = lm.process.name in ("masked", "block", "score_entropy")
        if ours["special"] is not None:
            assert got["vocab"] == lm.process.model_vocab_size, name
            assert got["special"] == ("<|mask|>" if role else "<|bos|>"), name
            if role:
                assert got["mask_token_id"] == lm.process.noise_token_id, name


@pytest.mark.slow
def test_the_exported_outputs_are_not_trivial(exported):
    """The probe compares trained, input-dependent outputs (not DDiT's all-zero initial logits)."""
    _, runs = exported
    for name, (_, _, lm, _) in runs.items():
        kwargs, out = hf_config.probe(lm)
        assert out.abs().max() > 1e-3 and out.std() > 1e-4, name


@pytest.mark.slow
def test_thunderdlm_loads_every_export_with_the_same_outputs(exported):
    _, runs = exported
    for name, (run, res, lm, _) in runs.items():
        again = thunderdlm.load(res.out, device="cpu")
        kwargs, ours = hf_config.probe(lm, seed=4)
        _, theirs = hf_config.probe(load_run(res.out, device="cpu"), seed=4)
        torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)
        assert again.cfg.process.name == lm.cfg.process.name
        assert again.tokenizer.fingerprint() == lm.tokenizer.fingerprint()
        info = json.loads((res.out / "thunderdlm_export.json").read_text())
        assert info["step"] == 3 and info["source_run"] == str(run.resolve())
        if name in ("masked_ddit", "ar_gpt", "block_ddit", "uniform_gpt_word"):
            assert len(again.generate(length=8, steps=4, seed=0)) == 1


# ---- the masked family: fast checks ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def masked(corpora):
    root, datas = corpora
    run = train_family(root, datas["char"], "masked_ddit") if not (root / "masked_ddit").exists() \
        else root / "masked_ddit"
    res = export_run(run, root / "masked_fast_export")
    return root, run, res


def test_an_export_holds_the_model_card_generation_config_and_weights(masked):
    root, run, res = masked
    names = {p.name for p in res.out.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_thunderdlm.py", "configuration_thunderdlm.py",
            "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md",
            "thunderdlm_export.json", "tokenizer", "data.json"} <= names
    config = json.loads((res.out / "config.json").read_text())
    assert config["model_type"] == "thunderdlm"
    assert config["auto_map"]["AutoModel"] == "modeling_thunderdlm.ThunderDLMModel"
    gen = json.loads((res.out / "generation_config.json").read_text())
    lm = load_run(run, device="cpu")
    assert gen["mask_token_id"] == config["mask_token_id"] == lm.process.noise_token_id
    assert gen["process"] == "masked" and gen["seq_len"] == 32 and gen["steps"] == 64
    card = (res.out / "README.md").read_text()
    assert "thunderdlm sample PATH" in card and "AutoModel.from_pretrained" in card
    assert "no figures are claimed" in card                       # the run has no eval.json
    for name in ("modeling_thunderdlm.py", "configuration_thunderdlm.py"):  # torch + transformers only
        tree = ast.parse((res.out / name).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert imported <= {"__future__", "math", "dataclasses", "torch", "transformers"}, imported


def test_the_card_quotes_eval_json_and_nothing_else(masked, tmp_path):
    root, run, _ = masked
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    figures = {"checkpoint": "step_00000003", "nats_per_token": 3.25, "stderr": 0.125,
               "bits_per_char": 4.6875, "windows": 2, "seq_len": 32, "t_samples": 4, "exact": False}
    (copy / "eval.json").write_text(json.dumps(figures))
    res = export_run(copy, tmp_path / "out")
    card = (res.out / "README.md").read_text()
    assert "3.2500 ± 0.1250 nats/token" in card and "4.6875 bits/char" in card
    assert json.loads((res.out / "eval.json").read_text()) == figures


def test_the_cards_plain_torch_sampler_runs_without_thunderdlm(masked):
    from thunderdlm.hf_export.card import MASKED_SAMPLER

    root, _, res = masked
    script = MASKED_SAMPLER.format(dir=str(res.out), prompt="ROMEO:")
    script += "\nimport sys\nassert not [m for m in sys.modules if m.startswith('thunderdlm')]\n"
    script += "assert (x != mask).all(), x\n"
    out = subprocess.run([sys.executable, "-c", script], cwd=root, text=True, capture_output=True,
                         timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ROMEO:") and len(out.stdout.strip()) >= 20


def test_cli_export_sample_and_eval_on_the_export(masked, capsys):
    from thunderdlm.cli import main

    root, run, _ = masked
    out = root / "cli_export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "AutoModel.from_pretrained" in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(out)]) == 2                  # not empty, no --force
    assert "--force" in capsys.readouterr().err
    assert main(["sample", str(out), "--length", "8", "--steps", "4", "--seed", "0", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["samples"]) == 1
    assert main(["eval", str(out), "--windows", "2", "--t-samples", "1",
                 "--json", str(root / "e.json")]) == 0
    assert json.loads((root / "e.json").read_text())["windows"] == 2
    assert main(["sample", str(out), "--checkpoint", "step_00000003", "--length", "4"]) == 2
    assert "is an export" in capsys.readouterr().err


# ---- hf-adapter runs: merged network, peft adapter, tokenizer with the mask token ------------------------

@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfx_llama")
    vocab = tiny_pretrained(root / "llama")
    (root / "corpus.txt").write_text("\n".join(LINES * 40))
    data = prepare_data(root / "data", source=None, paths=[str(root / "corpus.txt")], tokenizer="hf",
                        hf_path=str(root / "llama"))
    common = [f"data.dir={data}", "data.seq_len=16", f"model.path={root / 'llama'}",
              "train.batch_size=4", "train.lr=1e-2", "train.warmup_steps=1", "train.max_steps=3",
              "train.max_minutes=0", "train.ckpt_interval=3", "train.eval_interval=0",
              "train.device=cpu", "train.ema_decay=0.5"]
    runs = {}
    for name, preset, extra in (
            ("hf_masked", "smollm2_masked", ["model.lora_rank=4", "model.lora_alpha=8",
                                             "model.attn_anneal_steps=0"]),
            ("hf_embedding_film", "smollm2_embedding", ["model.lora_rank=0", "model.time_injection=film",
                                                        "process.latent_dim=8", "model.freeze_layers=0:0"])):
        cfg = load_config(preset, common + extra + [f"out_dir={root / name}"])
        train(cfg, show=False)
        res = export_run(root / name, root / f"{name}_export")
        lm = load_run(root / name, device="cpu")
        runs[name] = (root / name, res, lm, save_probe(lm, root / f"{name}.pt"))
    return root, vocab, runs


@pytest.mark.slow
def test_hf_adapter_exports_reload_in_plain_transformers(hf_runs):
    root, vocab, runs = hf_runs
    results = run_fresh({str(res.out): str(root / f"{n}.pt") for n, (_, res, _, _) in runs.items()}, root)
    assert results.pop("thunderdlm_imported") == []
    for name, (run, res, lm, ours) in runs.items():
        got = results[str(res.out)]
        assert max(got["diffs"]) <= 1e-5, (name, got["diffs"])
        assert got["ids"] == ours["text_ids"] and got["decoded"] == ours["decoded"]
    masked = results[str(runs["hf_masked"][1].out)]
    assert masked["mask_token_id"] == vocab and masked["vocab"] == vocab + 1
    assert masked["generated"] == {"shape": [1, 8], "masks_left": 0}
    assert "thunderdlm sample" in results[str(runs["hf_embedding_film"][1].out)]["generated"]["refused"]


PEFT_CHECK = r'''
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
d, probe = sys.argv[1], sys.argv[2]
base = AutoModelForCausalLM.from_pretrained(d + "/lm", dtype=torch.float32)
lm = PeftModel.from_pretrained(base, d + "/lora").eval()
merged = AutoModelForCausalLM.from_pretrained(d + "/lm", dtype=torch.float32)
p = torch.load(probe, weights_only=True)
with torch.no_grad():
    h = lm.get_base_model().model(input_ids=p["ids"], is_causal=False).last_hidden_state
print("RESULT", float((h - p["hidden"]).abs().max()), any(m.startswith("thunderdlm") for m in sys.modules))
'''


@pytest.mark.slow
def test_the_peft_adapter_on_its_base_is_the_runs_causal_lm(hf_runs):
    root, vocab, runs = hf_runs
    run, res, lm, _ = runs["hf_masked"]
    assert res.lora and res.lora_dir == res.out / "lora"
    assert json.loads((res.lora_dir / "adapter_config.json").read_text())["r"] == 4
    ids = torch.randint(0, vocab + 1, (2, 16), generator=torch.Generator().manual_seed(0))
    original = load_run(run, device="cpu")                   # unmerged LoRA, EMA weights
    with torch.no_grad():
        hidden = original.model.causal_lm.model(input_ids=ids, is_causal=False).last_hidden_state
    torch.save({"ids": ids, "hidden": hidden}, root / "peft.pt")
    out = subprocess.run([sys.executable, "-c", PEFT_CHECK, str(res.out), str(root / "peft.pt")],
                         text=True, capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    diff, imported = out.stdout.split("RESULT", 1)[1].split()
    assert float(diff) <= 1e-5 and imported == "False"


def test_hf_export_is_loadable_by_thunderdlm_from_its_own_lm_folder(hf_runs, tmp_path):
    """The export points model.path at its own lm/ (relative): it loads after a move."""
    root, vocab, runs = hf_runs
    _, res, lm, _ = runs["hf_masked"]
    moved = tmp_path / "moved"
    shutil.copytree(res.out, moved)
    again = load_run(moved, device="cpu")
    assert Path(again.cfg.model.path) == moved / "lm" and again.cfg.model.lora_rank == 4
    _, a = hf_config.probe(lm, seed=7)
    _, b = hf_config.probe(again, seed=7)
    torch.testing.assert_close(b, a, atol=0, rtol=0)                      # unmerged: exact


def test_every_tokenizer_kind_round_trips_through_transformers(corpora, tmp_path):
    """char (with and without the end-of-document token), word and bpe: the saved
    PreTrainedTokenizerFast gives thunderdlm's ids and text, and the process's row after them."""
    from transformers import PreTrainedTokenizerFast

    from thunderdlm.data import TokenData
    from thunderdlm.hf_export.tokenizer import save, to_transformers

    root, datas = corpora
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(TEXT)
    (tmp_path / "docs" / "b.txt").write_text("JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n")
    folders = dict(datas, char_eos=prepare_data(tmp_path / "eos", source=None,
                                                paths=[str(tmp_path / "docs")], tokenizer="char"))
    for name, folder in folders.items():
        tok = TokenData(folder).tokenizer
        for role in ("mask", "bos"):
            save(to_transformers(tok, role, 64), tmp_path / f"{name}_{role}")
            fast = PreTrainedTokenizerFast.from_pretrained(tmp_path / f"{name}_{role}")
            assert fast.encode(TEXT, add_special_tokens=False) == tok.encode(TEXT), name
            ids = torch.randint(0, tok.vocab_size, (40,), generator=torch.Generator().manual_seed(5)).tolist()
            assert fast.decode(ids) == tok.decode(ids), name
            assert len(fast) == tok.vocab_size + 1
            added = fast.mask_token_id if role == "mask" else fast.convert_tokens_to_ids("<|bos|>")
            assert added == tok.vocab_size, (name, role)
        if name == "char_eos":
            assert tok.eos_id is not None and fast.eos_token_id == tok.eos_id


def test_the_server_serves_an_export(masked):
    from fastapi.testclient import TestClient

    from thunderdlm.serve.config import ServeConfig
    from thunderdlm.serve.server import build_app

    _, _, res = masked
    with TestClient(build_app([res.out], ServeConfig(device="cpu"))) as client:
        model = client.get("/v1/models").json()["data"][0]
        assert model["process"] == "masked" and model["mask_token"] is True
        r = client.post("/v1/completions", json={"model": model["id"], "prompt": "RO",
                                                 "max_tokens": 4, "steps": 4, "seed": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("timed", [False, True], ids=["time_agnostic", "sigma_conditioned"])
def test_generate_equals_thunderdlms_greedy_low_confidence_sampler(corpora, tmp_path, timed):
    """A masked model trained enough to write text: the export's generate() (argmax, LLaDA's commit
    counts, t = 1 - j/S, blocks) gives thunderdlm's own greedy low-confidence samples token for token."""
    from thunderdlm.hf_export.modeling_thunderdlm import ThunderDLMModel

    root, datas = corpora
    cfg = load_config("quickstart", TINY + [
        f"data.dir={datas['char']}", "model.n_embd=64", "train.max_steps=150", "train.batch_size=16",
        "train.lr=3e-3", "train.warmup_steps=10", "train.ckpt_interval=150",
        f"process.time_conditioning={str(timed).lower()}", f"model.time_conditioning={str(timed).lower()}",
        f"out_dir={tmp_path / 'run'}"])
    train(cfg, show=False)
    res = export_run(tmp_path / "run", tmp_path / "out")
    lm = thunderdlm.load(tmp_path / "run", device="cpu")
    model = ThunderDLMModel.from_pretrained(res.out).eval()
    assert model.config.sigma_conditioning is timed
    prompt = lm.tokenizer.encode("ROMEO:")
    for length, steps, block in ((12, 12, None), (26, 26, None), (26, 9, None), (26, 13, 8)):
        texts, _ = lm.sample("ROMEO:", length=length, steps=steps, remasking="low_confidence",
                             temperature=0, seed=0, block_length=block)
        x = model.generate(torch.tensor([prompt]), max_new_tokens=length, steps=steps,
                           block_length=block, temperature=0)
        assert lm.tokenizer.decode(x[0].tolist()) == texts[0], (length, steps, block)
    assert len(set(texts[0])) > 5                               # real text, not one repeated token


def test_block_generate_decodes_on_the_models_grid_as_thunderdlm(corpora, tmp_path):
    """Block diffusion: the export's generate() cuts its blocks on the absolute grid the model was
    trained on (a prompt of P tokens fills the start of the first block), as thunderdlm's sampler
    does, so greedy samples are equal token for token for prompts of any length."""
    from thunderdlm.hf_export.modeling_thunderdlm import ThunderDLMModel

    root, datas = corpora
    cfg = load_config("shakespeare_char_block", TINY + [
        f"data.dir={datas['char']}", "process.block_size=4", "model.n_embd=64", "train.max_steps=150",
        "train.batch_size=16", "train.lr=3e-3", "train.warmup_steps=10", "train.ckpt_interval=150",
        f"out_dir={tmp_path / 'run'}"])
    train(cfg, show=False)
    res = export_run(tmp_path / "run", tmp_path / "out")
    lm = thunderdlm.load(tmp_path / "run", device="cpu")
    model = ThunderDLMModel.from_pretrained(res.out).eval()
    seen = set()
    for prompt in ("RO", "ROMEO:", "ROMEO: wh"):                 # 2, 6, 9 tokens: 4 ∤ P mostly
        ids = lm.tokenizer.encode(prompt)
        for length, steps in ((13, 13), (13, 5), (10, 2)):       # 2 steps < its blocks: one each
            texts, _ = lm.sample(prompt, length=length, steps=steps, remasking="low_confidence",
                                 temperature=0, seed=0)
            x = model.generate(torch.tensor([ids]), max_new_tokens=length, steps=steps, temperature=0)
            assert lm.tokenizer.decode(x[0].tolist()) == texts[0], (prompt, length, steps)
            seen.add(texts[0][len(prompt):])
    assert len(seen) > 3                                          # not one degenerate answer
    with pytest.raises(ValueError, match="blocks of 4 tokens"):
        model.generate(torch.tensor([ids]), max_new_tokens=8, block_length=8)
