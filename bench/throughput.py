"""Training throughput (tokens/s) of the real trainer step, written as JSON.

Times ``Trainer._train_step`` (data batch → process.loss → backward → clip → AdamW) after a warm-up,
for one or more configurations given as presets + overrides. Also reports the speed of the last
100 timed steps relative to the first 100, which catches the denormal slow-down (DESIGN.md §5).

    python bench/throughput.py --preset shakespeare_char --steps 300 --out bench/results/throughput.json
    python bench/throughput.py --preset shakespeare_char --set model.cond_dim=32 --set train.batch_size=32

On a GPU (``--device cuda``) the timed steps are bracketed by ``torch.cuda.synchronize()``, and the
JSON also holds the GPU name, peak memory (``torch.cuda.max_memory_allocated``) and the model FLOP
utilisation (MFU) = achieved model FLOP/s / peak dense FLOP/s, with model FLOPs per token from the
PaLM / nanoGPT formula ``6 N + 12 n_layer n_embd seq_len`` (N = parameters without the token
embedding table; the attention term is the full, bidirectional score/value product)::

    PYTHONPATH=. python bench/throughput.py --device cuda --set train.precision=bf16 \\
        --set data.dir=data/shakespeare_bpe --set data.seq_len=1024 --set model.n_layer=12 \\
        --set model.n_embd=768 --set model.n_head=12 --set train.batch_size=32 --steps 50

``--peak-tflops`` sets the peak used for MFU; by default it is looked up from the GPU name
(H100 SXM: 989.4 bf16 dense) and left out (MFU = null) on CPU or an unknown GPU.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from thunderdlm.bench.manifest import write_bench_json
from thunderdlm.run_config import load_config
from thunderdlm.train import Trainer

# Peak dense (no sparsity) bf16 tensor-core TFLOP/s by GPU name, most specific first.
PEAK_BF16_TFLOPS = (
    ("H100 NVL", 835.0),
    ("H100 PCIE", 756.0),
    ("H100", 989.4),        # SXM5 (NVIDIA H100 80GB HBM3)
    ("H200", 989.4),
    ("H800", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.05),
    ("A10G", 70.0),
    ("RTX 4090", 165.2),
)


def default_peak_tflops(gpu_name: str | None) -> float | None:
    """Peak dense bf16 TFLOP/s for a GPU name, or None (CPU, unknown GPU)."""
    if not gpu_name:
        return None
    upper = gpu_name.upper()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in upper:
            return tflops
    return None


def model_flops_per_token(model: torch.nn.Module, seq_len: int) -> dict:
    """PaLM / nanoGPT model FLOPs per trained token: 6 N + 12 n_layer n_embd seq_len."""
    n = model.num_params(non_embedding=True)
    cfg = model.cfg
    attn = 12 * cfg.n_layer * cfg.n_embd * seq_len
    # DDiT's adaLN / σ-embedding layers act once per *sequence* when σ is (B,), not per token, so
    # the formula overstates their share; reported separately for a tighter figure.
    cond = sum(p.numel() for name, p in model.named_parameters()
               if "adaLN_modulation" in name or name.startswith("sigma_map"))
    return {"non_embedding_params": n, "cond_params": cond,
            "flops_per_token": 6 * n + attn, "flops_per_token_excl_cond": 6 * (n - cond) + attn}


def measure(preset: str, overrides: list[str], steps: int, warmup: int,
            device: str | None = None, peak_tflops: float | None = None) -> dict:
    extra = [f"train.device={device}"] if device else []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(preset, overrides + extra + [f"out_dir={tmp}/run", "train.max_steps=1000000",
                                                       "train.max_minutes=0", "train.eval_interval=0"])
        trainer = Trainer(cfg, Path(tmp) / "run", show=False)
        cuda = trainer.device.type == "cuda"
        sync = (lambda: torch.cuda.synchronize(trainer.device)) if cuda else (lambda: None)
        t_warm = time.perf_counter()
        for _ in range(warmup):
            trainer._train_step()
        sync()
        warmup_s = time.perf_counter() - t_warm
        if cuda:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        times = []
        losses = []
        sync()
        t_start = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            loss, _, _ = trainer._train_step()
            sync()
            times.append(time.perf_counter() - t0)
            losses.append(loss)
        total_s = time.perf_counter() - t_start
        tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len
        n = min(100, steps // 2)
        res = {
            "preset": preset, "overrides": overrides + extra,
            "device": str(trainer.device),
            "params": trainer.raw_model.num_params(),
            "tokens_per_step": tokens,
            "tokens_per_s": tokens * steps / sum(times),
            "first_vs_last_speed": (sum(times[:n]) / max(sum(times[-n:]), 1e-9)) if n else None,
            "ms_per_step": 1000 * sum(times) / steps,
            "threads": torch.get_num_threads(),
        }
        if cuda:
            name = torch.cuda.get_device_name(trainer.device)
            peak = peak_tflops if peak_tflops is not None else default_peak_tflops(name)
            flops = model_flops_per_token(trainer.raw_model, cfg.data.seq_len)
            achieved = flops["flops_per_token"] * res["tokens_per_s"]
            res.update({
                "gpu": name,
                "precision": cfg.train.precision, "autocast_bf16": trainer.autocast is not None
                and trainer.autocast().__class__.__name__ == "autocast",
                "compile": cfg.train.compile,
                "steps": steps, "warmup": warmup, "warmup_s": warmup_s,
                "tokens_per_s_wall": tokens * steps / total_s,
                "ms_per_step_median": 1000 * sorted(times)[len(times) // 2],
                **flops,
                "model_tflops_per_s": achieved / 1e12,
                "peak_tflops": peak,
                "mfu": achieved / (peak * 1e12) if peak else None,
                "mfu_excl_cond": (flops["flops_per_token_excl_cond"] * res["tokens_per_s"] / (peak * 1e12)
                                  if peak else None),
                "peak_mem_allocated_gib": torch.cuda.max_memory_allocated(trainer.device) / 2**30,
                "peak_mem_reserved_gib": torch.cuda.max_memory_reserved(trainer.device) / 2**30,
                "loss_first": losses[0], "loss_last": losses[-1],
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
            })
        return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="shakespeare_char")
    ap.add_argument("--set", action="append", default=[], help="key=value override (repeatable)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default=None,
                    help="cpu | cuda | cuda:N (sets train.device; default: the config's, i.e. auto)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak dense TFLOP/s for MFU (default: looked up from the GPU name; none on CPU)")
    ap.add_argument("--out", default="bench/results/throughput.json")
    args = ap.parse_args()
    res = measure(args.preset, args.set, args.steps, args.warmup, args.device, args.peak_tflops)
    write_bench_json(res, args.out, Path(__file__).parent)


if __name__ == "__main__":
    main()
