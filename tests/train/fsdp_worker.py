"""Run by test_distributed.py under torchrun (2 CPU ranks, gloo): FSDP against DDP on one config.

1. ``train.distributed=fsdp``, 6 steps of 2 accumulated micro-batches, a small ``grad_clip`` (so
   clipping acts every step), evaluation every 2 steps (every rank runs it under FSDP), a checkpoint
   every 2 steps; one weight of block 0 and one of the root are frozen, so both kinds of FSDP unit
   mix frozen and trainable parameters.
2. Rewind to the step-4 checkpoint and resume under FSDP: steps 5-6 must come out the same.
3. The same config under ``train.distributed=ddp``; then one more step resuming that DDP
   checkpoint under FSDP (the files are the same in both modes).

Each rank writes ``fsdp_rank<r>.json`` (digests of the full weights); rank 0 also writes the full
weights of both runs and one forward of the sharded model, for the test to compare.
"""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import thunderdlm.train.trainer as T
from thunderdlm.run_config import RunConfig

FROZEN = ("blocks.0.attn.c_attn.weight", "sigma_map.mlp.0.weight")

data_dir, out = sys.argv[1], Path(sys.argv[2])


def config(distributed: str, steps: int = 6) -> RunConfig:
    return RunConfig.from_data({
        "data": {"dir": data_dir, "seq_len": 16},
        "model": {"name": "ddit", "n_layer": 2, "n_head": 2, "n_embd": 16, "cond_dim": 16},
        "train": {"batch_size": 4, "grad_accum": 2, "lr": 3e-3, "warmup_steps": 1, "grad_clip": 0.05,
                  "max_steps": steps, "eval_interval": 2, "eval_windows": 8, "ckpt_interval": 2,
                  "log_interval": 1, "distributed": distributed},
        "seed": 3})


def freezing(build_process):
    """build_process whose networks come with FROZEN set to requires_grad=False (before sharding)."""
    def build(cfg, vocab_size):
        process = build_process(cfg, vocab_size)
        build_network = process.build_network

        def network(*args, **kwargs):
            net = build_network(*args, **kwargs)
            for name, p in net.named_parameters():
                if name in FROZEN:
                    p.requires_grad_(False)
            return net
        process.build_network = network
        return process
    return build


T.build_process = freezing(T.build_process)


def full_weights(trainer: T.Trainer) -> dict[str, torch.Tensor]:
    if trainer.fsdp:   # a collective: the full tensors on every rank
        sd = get_model_state_dict(trainer.raw_model, options=StateDictOptions(full_state_dict=True))
    else:
        sd = trainer.raw_model.state_dict()
    return {k: v.detach().cpu().clone().contiguous() for k, v in sd.items()}


def digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(weights.items()):
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


report: dict = {}
run = out / "fsdp"

# 1. FSDP
trainer = T.Trainer(config("fsdp"), run, show=False)
rank = trainer.rank
report["fsdp_active"] = trainer.fsdp
report["param_type"] = type(trainer.raw_model.blocks[0].attn.c_attn.weight).__name__
init = full_weights(trainer)
_, empty = T.full_state_dicts(trainer.raw_model, trainer.optimizer)   # before any step
report["empty_optimizer_kept"] = not trainer.optimizer.state and (rank != 0 or empty["state"] == {})
trainer.fit()
fsdp_w = full_weights(trainer)
report["fsdp_digest"] = digest(fsdp_w)
report["frozen_unchanged"] = all(torch.equal(init[n], fsdp_w[n]) for n in FROZEN)
report["trainable_changed"] = not torch.equal(init["blocks.0.mlp.c_fc.weight"], fsdp_w["blocks.0.mlp.c_fc.weight"])
gen = torch.Generator().manual_seed(0)
x = torch.randint(0, trainer.data.vocab_size, (2, 16), generator=gen)
sigma = torch.rand(2, generator=gen)
trainer.raw_model.eval()
with torch.no_grad():
    logits = trainer.raw_model(x, sigma)
if rank == 0:
    save_file({"x": x, "sigma": sigma, "logits": logits.contiguous()}, str(out / "fsdp_forward.safetensors"))
    save_file(fsdp_w, str(out / "fsdp_weights.safetensors"))
    shutil.copy(run / "metrics.jsonl", out / "fsdp_metrics_first.jsonl")
    shutil.rmtree(run / "checkpoints" / "step_00000006")
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
dist.barrier()

# 2. exact resume under FSDP from step 4
again = T.Trainer(config("fsdp"), run, resume=True, show=False)
report["resumed_from"] = again.step
again.fit()
report["resume_digest"] = digest(full_weights(again))

# 3. the same run under DDP
ddp = T.Trainer(config("ddp"), out / "ddp", show=False)
report["ddp_active"] = not ddp.fsdp
ddp.fit()
ddp_w = full_weights(ddp)
report["ddp_digest"] = digest(ddp_w)
if rank == 0:
    save_file(ddp_w, str(out / "ddp_weights.safetensors"))
switched = T.Trainer(config("fsdp", steps=7), out / "ddp", resume=True, show=False)
report["switched_from"] = switched.step
report["switched_to"] = switched.fit().step
(out / f"fsdp_rank{rank}.json").write_text(json.dumps(report))
dist.barrier()
dist.destroy_process_group()
