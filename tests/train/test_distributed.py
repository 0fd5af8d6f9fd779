import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import thunderdlm
from thunderdlm.errors import ConfigError
from thunderdlm.train import fsdp_blocks
from thunderdlm.train.config import TrainConfig


@pytest.mark.distributed
def test_two_process_torchrun_keeps_weights_identical(tiny_data, tmp_path):
    _check_ddp_worker(tiny_data, tmp_path)
    assert (tmp_path / "run" / "checkpoints" / "step_00000004" / "rng_rank1.safetensors").exists()


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """(model folder, data folder tokenized with its own tokenizer) of a tiny random Llama."""
    from thunderdlm.data import prepare_data
    from tests.tiny_pretrained import LINES, tiny_pretrained

    root = tmp_path_factory.mktemp("hf")
    tiny_pretrained(root / "llama")
    (root / "corpus.txt").write_text("\n".join(LINES * 40))
    data = prepare_data(root / "data", source=None, paths=[str(root / "corpus.txt")], tokenizer="hf",
                        hf_path=str(root / "llama"))
    return root / "llama", data


DDP_VARIANTS = {
    # the embedding process calls its network's own methods (clean_latents, latents, anchor_proj)
    # beside the DDP-wrapped forward: every parameter must still be synchronised
    "embedding": lambda hf: {"process": {"name": "embedding", "latent_dim": 8, "anchor_weight": 0.1,
                                         "anchor_target": "embedding", "self_conditioning": True}},
    # recipe 1 on the hf adapter: LoRA on the upper half, the mask row, attention annealing
    "hf_masked": lambda hf: {
        "data": {"dir": str(hf[1]), "seq_len": 16},
        "model": {"name": "hf", "path": str(hf[0]), "lora_rank": 4, "freeze_layers": "half",
                  "time_conditioning": False, "attn_anneal_steps": 2, "shift_logits": True},
        "process": {"name": "masked", "time_conditioning": False}},
    # recipe 2 on the hf adapter: the bridge over its frozen embeddings, anchor, LM head as softmax head
    "hf_embedding": lambda hf: {
        "data": {"dir": str(hf[1]), "seq_len": 16},
        "model": {"name": "hf", "path": str(hf[0]), "lora_rank": 4, "freeze_layers": "half"},
        "process": {"name": "embedding", "latent_dim": 8, "freeze_embeddings": True, "head": "softmax",
                    "anchor_weight": 0.1, "anchor_target": "embedding", "anchor_metric": "cosine"}},
}


@pytest.mark.distributed
@pytest.mark.parametrize("variant", list(DDP_VARIANTS))
def test_two_process_ddp_other_processes_and_the_hf_adapter(variant, tiny_data, tiny_hf, tmp_path):
    _check_ddp_worker(tiny_data, tmp_path, DDP_VARIANTS[variant](tiny_hf))


@pytest.mark.distributed
@pytest.mark.slow
def test_ctrl_c_under_ddp_stops_every_rank_at_one_step_and_resumes_exactly(tiny_data, tmp_path):
    worker = Path(__file__).with_name("ddp_interrupt_worker.py")
    env = {**os.environ, "THUNDERDLM_THREADS": "1", "OMP_NUM_THREADS": "1"}

    def torchrun(run, mode):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(worker), str(tiny_data), str(run), mode]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(run):
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}
    torchrun(tmp_path / "ref", "ref")
    torchrun(tmp_path / "c", "interrupt")
    assert {(tmp_path / "c" / f"stopped{r}.txt").read_text() for r in (0, 1)} == {"interrupt 4"}
    assert (tmp_path / "c" / "checkpoints" / "step_00000004" / "rng_rank1.safetensors").exists()
    torchrun(tmp_path / "c", "resume")
    assert losses(tmp_path / "ref") == losses(tmp_path / "c")


def _check_ddp_worker(data_dir, out, sections: dict | None = None) -> None:
    """2 DDP ranks train a few steps (ddp_worker.py): the same weights, different batches."""
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "THUNDERDLM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(data_dir), str(out)] + ([json.dumps(sections)] if sections else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = (out / "rank0.txt").read_text().split()
    r1 = (out / "rank1.txt").read_text().split()
    assert r0[0] == r1[0], "weights differ between ranks after DDP steps"
    assert r0[1] != r1[1], "both ranks drew the same batch: data is not sharded by rank"


def _run_fsdp_worker(data_dir, out):
    worker = Path(__file__).with_name("fsdp_worker.py")
    env = {**os.environ, "THUNDERDLM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(data_dir), str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.distributed
def test_fsdp_two_process_torchrun_matches_ddp_and_writes_full_checkpoints(tiny_data, tmp_path):
    """FSDP2 on 2 gloo ranks: identical full weights on both ranks, the same training as DDP
    (losses, clipped gradient norms, evaluation, weights), exact resume, and checkpoints that a
    single process loads (same files as DDP writes)."""
    proc = _run_fsdp_worker(tiny_data, tmp_path)
    if proc.returncode != 0 and "gloo" in proc.stderr and "not supported" in proc.stderr.lower() \
            and "fully_shard" in proc.stderr:
        pytest.skip(f"FSDP2 does not run on gloo in this torch build: {proc.stderr[-600:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"fsdp_rank{r}.json").read_text()) for r in (0, 1))
    assert r0["fsdp_active"] and r0["param_type"] == "DTensor", r0
    assert r0["ddp_active"]
    assert (r0["switched_from"], r0["switched_to"]) == (6, 7)   # a DDP checkpoint resumed under FSDP
    # FSDP keeps one model: the full weights are the same on both ranks, frozen ones untouched
    assert r0["fsdp_digest"] == r1["fsdp_digest"]
    assert r0["ddp_digest"] == r1["ddp_digest"]
    assert r0["frozen_unchanged"] and r0["trainable_changed"]
    assert r0["empty_optimizer_kept"] and r1["empty_optimizer_kept"]   # no zero step to save one
    # exact resume under FSDP from the step-4 checkpoint
    assert r0["resumed_from"] == 4
    assert r0["resume_digest"] == r0["fsdp_digest"] == r1["resume_digest"]
    keys = ("step", "loss", "grad_norm", "val_nelbo", "val_se")
    first = [{k: r.get(k) for k in keys} for r in _rows(tmp_path / "fsdp_metrics_first.jsonl")]
    resumed = [{k: r.get(k) for k in keys} for r in _rows(tmp_path / "fsdp" / "metrics.jsonl")]
    assert first == resumed
    # the same training as DDP: losses, clipped gradient norms (grad_clip acts every step),
    # evaluation on every rank, and the weights, up to float rounding
    fsdp_rows = _rows(tmp_path / "fsdp" / "metrics.jsonl")
    ddp_rows = [r for r in _rows(tmp_path / "ddp" / "metrics.jsonl") if r["step"] <= 6]   # 7: under FSDP
    assert [r["step"] for r in fsdp_rows] == [r["step"] for r in ddp_rows]
    assert sum("val_nelbo" in r for r in fsdp_rows) == 3
    for f, d in zip(fsdp_rows, ddp_rows):
        for k in ("loss", "grad_norm", "val_nelbo"):
            if k in d:
                assert f[k] == pytest.approx(d[k], rel=1e-5), (k, f, d)
    assert all(r["grad_norm"] > 0.05 for r in fsdp_rows if "grad_norm" in r)
    fsdp_w = load_file(str(tmp_path / "fsdp_weights.safetensors"))
    ddp_w = load_file(str(tmp_path / "ddp_weights.safetensors"))
    assert fsdp_w.keys() == ddp_w.keys()
    for name in fsdp_w:
        torch.testing.assert_close(fsdp_w[name], ddp_w[name], atol=1e-5, rtol=1e-4, msg=name)
    # checkpoints: the same files and layout as DDP writes, and the last holds the final weights
    f_ck, d_ck = (tmp_path / run / "checkpoints" / "step_00000006" for run in ("fsdp", "ddp"))
    assert sorted(p.name for p in f_ck.iterdir()) == sorted(p.name for p in d_ck.iterdir())
    assert json.loads((f_ck / "optimizer.json").read_text()) == json.loads((d_ck / "optimizer.json").read_text())
    f_opt, d_opt = load_file(str(f_ck / "optimizer.safetensors")), load_file(str(d_ck / "optimizer.safetensors"))
    assert f_opt.keys() == d_opt.keys()
    for name in f_opt:
        torch.testing.assert_close(f_opt[name], d_opt[name], atol=1e-6, rtol=1e-3, msg=name)
    f_model = load_file(str(f_ck / "model.safetensors"))
    assert all(torch.equal(f_model[k], fsdp_w[k]) for k in fsdp_w) and f_model.keys() == fsdp_w.keys()
    # a single process (what `thunderdlm sample` uses) loads it and computes the sharded model's output
    lm = thunderdlm.load(tmp_path / "fsdp", device="cpu")
    fwd = load_file(str(tmp_path / "fsdp_forward.safetensors"))
    with torch.no_grad():
        logits = lm.model(fwd["x"], fwd["sigma"])
    torch.testing.assert_close(logits, fwd["logits"], atol=1e-5, rtol=1e-5)
    texts, _ = lm.sample(length=8, n=1, steps=4)
    assert len(texts) == 1 and texts[0]


def test_train_distributed_rejects_unknown_value_and_fsdp_with_ema(tiny_config):
    assert tiny_config(distributed="fsdp").train.distributed == "fsdp"
    assert tiny_config().train.distributed == "ddp"
    with pytest.raises(ConfigError, match=r"train\.distributed.*did you mean 'fsdp'"):
        tiny_config(distributed="fsdpp")
    with pytest.raises(ConfigError, match=r"train\.ema_decay.*fsdp"):
        tiny_config(distributed="fsdp", ema_decay=0.999)
    with pytest.raises(ConfigError, match=r"train\.distributed"):
        TrainConfig(max_steps=1, distributed="zero3")


def test_fsdp_blocks_finds_every_module_list_element_with_parameters():
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.ModuleList([nn.Linear(2, 2), nn.Identity()])   # nested list
            self.out = nn.Linear(2, 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 2)
            self.layers = nn.ModuleList([Layer(), Layer()])
            self.heads = nn.ModuleList([nn.Linear(2, 3)])

    net = Net()
    blocks = fsdp_blocks(net)
    expected = [net.layers[0], net.layers[1], net.layers[0].experts[0], net.layers[1].experts[0], net.heads[0]]
    assert {id(b) for b in blocks} == {id(b) for b in expected} and len(blocks) == len(expected)
    # parents come before the blocks nested in them (shard_model shards them in reverse order)
    pos = {id(b): i for i, b in enumerate(blocks)}
    assert pos[id(net.layers[0])] < pos[id(net.layers[0].experts[0])]
