"""GPU benchmark suite: DDiT training tokens/s and MFU in bf16 at ~100M parameters, sequence 1024.

Runs on a CUDA machine from the repository root (the package need not be installed)::

    PYTHONPATH=. python3 bench/gpu_throughput.py --out-dir bench/results/gpu

1. an attention check on the real model shapes: one training forward/backward with SDPA forced to
   the flash backend (``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``) must succeed, each SDPA backend
   is tried alone on (B, H, L, Dh) bf16 q/k/v, and the kernels that the default dispatch runs are
   read off the profiler -> ``attention_check.json``;
2. ``bench/throughput.py --device cuda`` in a fresh process per configuration (batch sizes ×
   compile off/on) -> ``<name>.json`` each, and ``summary.json`` plus a Markdown table on stdout.

Needs a prepared data folder (``thunderdlm data prepare shakespeare --tokenizer bpe --vocab-size 4096
--out data/shakespeare_bpe``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

MODEL_100M = ["model.n_layer=12", "model.n_embd=768", "model.n_head=12", "model.cond_dim=128"]


def base_overrides(data_dir: str, seq_len: int) -> list[str]:
    return [f"data.dir={data_dir}", f"data.seq_len={seq_len}", *MODEL_100M, "train.precision=bf16"]


def attention_check(overrides: list[str], batch: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from thunderdlm.run_config import load_config
    from thunderdlm.train import Trainer

    res: dict = {"enabled": {"flash": torch.backends.cuda.flash_sdp_enabled(),
                             "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                             "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                             "math": torch.backends.cuda.math_sdp_enabled()}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("shakespeare_char", overrides + [
            f"train.batch_size={batch}", "train.device=cuda", f"out_dir={tmp}/run",
            "train.max_steps=10", "train.eval_interval=0", "train.compile=false"])
        tr = Trainer(cfg, Path(tmp) / "run", show=False)
        m = tr.raw_model.cfg
        B, H, L, Dh = batch, m.n_head, cfg.data.seq_len, m.n_embd // m.n_head
        res["shape_BHLD"] = [B, H, L, Dh]
        # (a) each backend alone on the model's q/k/v shape, bf16, forward + backward
        per_backend = {}
        for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("mem_efficient", SDPBackend.EFFICIENT_ATTENTION),
                         ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]:
            q, k, v = (torch.randn(B, H, L, Dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            try:
                with sdpa_kernel(be):
                    y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    y.float().sum().backward()
                torch.cuda.synchronize()
                per_backend[name] = "ok"
            except Exception as e:  # noqa: BLE001 - recorded, not fatal
                per_backend[name] = f"{type(e).__name__}: {str(e)[:400]}"
        res["sdpa_alone_bf16"] = per_backend
        # (b) the real training forward/backward (autocast bf16, model's own q/k/v layout) forced to flash
        batch_x = tr.windows.next_batch().to(tr.device)
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), tr.autocast():
                out = tr.process.loss(tr.model, batch_x)
            out.loss.backward()
            torch.cuda.synchronize()
            res["train_step_forced_flash"] = {"ok": True, "loss": float(out.loss)}
        except Exception as e:  # noqa: BLE001
            import traceback
            res["train_step_forced_flash"] = {"ok": False, "error": traceback.format_exc()[-3000:]}
        tr.optimizer.zero_grad(set_to_none=True)
        # (c) which attention kernels the default dispatch launches in a real _train_step
        tr._train_step()
        torch.cuda.synchronize()
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            tr._train_step()
            torch.cuda.synchronize()
        keys = ("flash", "fmha", "cudnn", "attention", "sdpa", "efficient", "cutlass")
        kernels = {}
        all_kernels = []
        for ev in prof.key_averages():
            name = ev.key
            dev_t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            all_kernels.append((dev_t, name))
            if any(k in name.lower() for k in keys):
                kernels[name[:200]] = {"count": ev.count, "device_us": dev_t}
        res["default_dispatch_attention_kernels"] = kernels
        res["top_kernels_us"] = [[round(t), n[:160]] for t, n in sorted(all_kernels, reverse=True)[:25]]
        del tr
    torch.cuda.empty_cache()
    return res


def _time_cuda(fn, iters: int = 10, warmup: int = 3) -> float:
    """Mean seconds per call, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / iters


def diagnose(batch: int = 32, seq_len: int = 1024, d: int = 768, heads: int = 12) -> dict:
    """Speed of the building blocks on this GPU: big GEMM, the model's GEMM shapes (incl. the odd
    vocabulary 4097 = 4096 + mask), SDPA per backend, and the GPU's clocks / throttle reasons."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    res: dict = {}
    try:
        res["nvidia_smi"] = subprocess.run(["nvidia-smi", "-q", "-d", "CLOCK,POWER,PERFORMANCE"],
                                           capture_output=True, text=True, timeout=30).stdout[-4000:]
    except Exception as e:  # noqa: BLE001
        res["nvidia_smi"] = repr(e)
    bf = torch.bfloat16
    gemm = {}
    tokens = batch * seq_len
    for name, (m, k, n) in {"8192^3": (8192, 8192, 8192), "qkv": (tokens, d, 3 * d),
                            "mlp_fc": (tokens, d, 4 * d), "mlp_proj": (tokens, 4 * d, d),
                            "head_V4097": (tokens, d, 4097), "head_V4096": (tokens, d, 4096),
                            "head_V4160": (tokens, d, 4160)}.items():
        a = torch.randn(m, k, device="cuda", dtype=bf)
        b = torch.randn(k, n, device="cuda", dtype=bf)
        s = _time_cuda(lambda: a @ b)
        gemm[name] = {"ms": 1000 * s, "tflops": 2 * m * k * n / s / 1e12}
        del a, b
    res["gemm_bf16"] = gemm
    sd = {}
    dh = d // heads
    for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("mem_efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        q, k, v = (torch.randn(batch, heads, seq_len, dh, device="cuda", dtype=bf, requires_grad=True)
                   for _ in range(3))
        g = torch.randn(batch, heads, seq_len, dh, device="cuda", dtype=bf)
        try:
            with sdpa_kernel(be):
                fwd = _time_cuda(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
                both = _time_cuda(lambda: torch.autograd.grad(
                    torch.nn.functional.scaled_dot_product_attention(q, k, v), (q, k, v), g))
            flops = 4 * batch * heads * seq_len * seq_len * dh
            sd[name] = {"fwd_ms": 1000 * fwd, "fwd_tflops": flops / fwd / 1e12,
                        "fwd_bwd_ms": 1000 * both, "fwd_bwd_tflops": 3.5 * flops / both / 1e12}
        except Exception as e:  # noqa: BLE001
            sd[name] = f"{type(e).__name__}: {str(e)[:300]}"
    res["sdpa_bf16"] = sd
    return res


def profile_step(overrides: list[str], batch: int, compile: bool, warmup: int = 4) -> dict:
    """Top CUDA kernels (device µs, calls) of one real ``_train_step`` after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    from thunderdlm.run_config import load_config
    from thunderdlm.train import Trainer
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("shakespeare_char", overrides + [
            f"train.batch_size={batch}", "train.device=cuda", f"out_dir={tmp}/run",
            "train.max_steps=10", "train.eval_interval=0", f"train.compile={str(compile).lower()}"])
        tr = Trainer(cfg, Path(tmp) / "run", show=False)
        for _ in range(warmup):
            tr._train_step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tr._train_step()
        torch.cuda.synchronize()
        step_ms = 1000 * (time.perf_counter() - t0)
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            tr._train_step()
            torch.cuda.synchronize()
        rows = []
        for ev in p.key_averages():
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            rows.append((t, ev.count, ev.key))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        del tr
    torch.cuda.empty_cache()
    return {"compile": compile, "batch": batch, "step_ms_unprofiled": step_ms,
            "kernel_us_total": total,
            "top": [[round(t), c, n[:150]] for t, c, n in rows[:30]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="data/shakespeare_bpe")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, action="append", default=None, help="batch sizes (repeatable)")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="both")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile-warmup", type=int, default=8)
    ap.add_argument("--timeout", type=int, default=240, help="seconds per configuration")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--diag", action="store_true", help="also time GEMM / SDPA building blocks")
    ap.add_argument("--profile", choices=("off", "on", "both"), default=None,
                    help="profile one train step (compile off / on / both)")
    ap.add_argument("--no-runs", action="store_true", help="only the checks, no throughput runs")
    ap.add_argument("--out-dir", default="bench/results/gpu")
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = args.batch or [32, 64]
    base = base_overrides(args.data_dir, args.seq_len)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["python3", *sys.argv])}
    print(json.dumps(env), flush=True)

    if not args.skip_check:
        t0 = time.perf_counter()
        try:
            check = attention_check(base, batches[0])
        except Exception:  # noqa: BLE001
            import traceback
            check = {"error": traceback.format_exc()[-4000:]}
        check["seconds"] = time.perf_counter() - t0
        (out_dir / "attention_check.json").write_text(json.dumps({**env, **check}, indent=1))
        print(json.dumps(check, indent=1), flush=True)

    if args.diag:
        try:
            dg = diagnose(batches[0], args.seq_len)
        except Exception:  # noqa: BLE001
            import traceback
            dg = {"error": traceback.format_exc()[-4000:]}
        (out_dir / "diagnose.json").write_text(json.dumps({**env, **dg}, indent=1))
        print(json.dumps(dg, indent=1), flush=True)
    if args.profile:
        profs = {}
        for comp in {"off": [False], "on": [True], "both": [False, True]}[args.profile]:
            try:
                profs[f"compile_{'on' if comp else 'off'}"] = profile_step(base, batches[0], comp)
            except Exception:  # noqa: BLE001
                import traceback
                profs[f"compile_{'on' if comp else 'off'}"] = {"error": traceback.format_exc()[-4000:]}
        (out_dir / "profile.json").write_text(json.dumps({**env, **profs}, indent=1))
        print(json.dumps(profs, indent=1), flush=True)
    if args.no_runs:
        return
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows, failures = [], []
    for comp in modes:
        for b in batches:
            name = f"ddit100m_L{args.seq_len}_b{b}_compile{'on' if comp else 'off'}"
            out = out_dir / f"{name}.json"
            cmd = [sys.executable, "bench/throughput.py", "--device", "cuda",
                   "--steps", str(args.steps), "--warmup", str(args.compile_warmup if comp else args.warmup),
                   "--out", str(out), *[x for o in base + [f"train.batch_size={b}", f"train.compile={str(comp).lower()}"]
                                        for x in ("--set", o)]]
            if args.peak_tflops is not None:
                cmd += ["--peak-tflops", str(args.peak_tflops)]
            print(f"\n=== {name}\n$ {' '.join(cmd)}", flush=True)
            t0 = time.perf_counter()
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
                rc, text = p.returncode, p.stdout + p.stderr
            except subprocess.TimeoutExpired as e:
                rc, text = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                text += (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            secs = time.perf_counter() - t0
            print(text[-6000:], flush=True)
            if rc == 0 and out.exists():
                r = json.loads(out.read_text())
                r["process_seconds"] = secs
                out.write_text(json.dumps(r, indent=1))
                rows.append({"name": name, **r})
            else:
                failures.append({"name": name, "rc": rc, "seconds": secs, "cmd": " ".join(cmd),
                                 "tail": text[-5000:]})
    (out_dir / "summary.json").write_text(json.dumps({**env, "results": rows, "failures": failures}, indent=1))
    print("\n| config | params | batch | compile | tokens/s | ms/step | MFU | peak mem GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['params']/1e6:.1f}M | {r['tokens_per_step']//args.seq_len} | {r['compile']} | "
              f"{r['tokens_per_s']:,.0f} | {r['ms_per_step']:.1f} | "
              f"{(r['mfu'] or 0)*100:.1f}% | {r['peak_mem_allocated_gib']:.1f} |")
    for f in failures:
        print(f"FAILED {f['name']} rc={f['rc']}")


if __name__ == "__main__":
    main()
