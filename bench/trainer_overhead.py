"""Trainer overhead: the real training loop against a bare PyTorch loop of the same model, side by side.

In ONE process, alternating rounds (A, B, A, B, ...) so that machine noise hits both, this times

* **bare**: a nanoGPT-style loop — the same network (``process.build_network``, i.e.
  ``thunderdlm.models.build_model``) with the same initial weights, the same loss written out by
  hand (BOS-shifted teacher forcing, mean NLL: the autoregressive process's, checked equal), AdamW
  with the trainer's parameter groups and settings (``make_optimizer``: decay on matrices only,
  fused only on CUDA), gradient clipping, the same warm-up + cosine schedule, on random windows
  sliced from the same token bin (memmap slice → torch); no logging, EMA, metrics or checkpoints;
* **trainer**: ``Trainer.fit()`` itself, extended by ``--round-steps`` steps each round (logging
  every ``train.log_interval`` steps, metrics, tokens/s accounting, the progress display, EMA if
  enabled; evaluation off, and the checkpoint ``fit`` writes at its end skipped, as a run writes
  one only every ``ckpt_interval`` steps).

Both start from the same weights and draw different batches (the bare loop has its own generator),
which does not change the cost of a step. The ratio trainer / bare (tokens/s) is the figure of
merit; short rounds (two steps each) keep the two loops under the same load when other jobs share
the machine, and the median and quartiles of the per-round ratios show the spread. A second pass,
alternating step by step, times the parts of a step of each (data, forward, backward, clip,
optimiser, EMA, after-step bookkeeping): where a difference would show.

    THUNDERDLM_THREADS=1 python bench/trainer_overhead.py --rounds 40 --round-steps 2
    THUNDERDLM_THREADS=1 python bench/trainer_overhead.py --set train.ema_decay=0.999
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thunderdlm.bench.manifest import write_bench_json
from thunderdlm.run_config import load_config
from thunderdlm.runtime import setup_runtime
from thunderdlm.train import Trainer, learning_rate, make_optimizer


class BareLoop:
    """nanoGPT's training loop around the trainer's network, loss and optimiser settings."""

    def __init__(self, trainer: Trainer):
        cfg = trainer.cfg
        self.tc, self.seq_len = cfg.train, cfg.data.seq_len
        self.process = trainer.process
        self.model = trainer.process.build_network(cfg.model, cfg.data.seq_len).to(trainer.device)
        self.model.load_state_dict(trainer.raw_model.state_dict())
        self.optimizer = make_optimizer(self.model, self.tc)
        self.data = np.memmap(Path(cfg.data.dir) / "train.bin", dtype=trainer.data.split("train").dtype,
                              mode="r")
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.device, self.step = trainer.device, 0
        self.max_steps = 10_000

    def get_batch(self) -> torch.Tensor:
        ix = torch.randint(len(self.data) - self.seq_len + 1, (self.tc.batch_size,), generator=self.gen)
        return torch.stack([torch.from_numpy(self.data[i:i + self.seq_len].astype(np.int64))
                            for i in ix.tolist()]).to(self.device)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The autoregressive process's loss written out as nanoGPT does: mean next-token NLL,
        the window shifted right behind BOS (``vocab_size``), the BOS logit never a target."""
        V = self.process.vocab_size
        inp = torch.cat([torch.full_like(x[:, :1], V), x[:, :-1]], dim=1)     # (B, L)
        logits = self.model(inp, None, causal=True)                             # (B, L, V + 1)
        return F.cross_entropy(logits[..., :V].reshape(-1, V), x.reshape(-1))

    def train_step(self, timings: dict | None = None) -> None:
        mark = _Marks(timings)
        lr = learning_rate(self.tc, self.step, self.step / self.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = self.get_batch()
        mark("data")
        loss = self.loss(x)
        mark("forward")
        loss.backward()
        mark("backward")
        nn.utils.clip_grad_norm_(self.model.parameters(), _clip(self.tc))
        mark("clip")
        self.optimizer.step()
        mark("optimizer")
        self.optimizer.zero_grad(set_to_none=True)
        mark("zero_grad")
        self.step += 1


def _clip(tc) -> float:
    """The clipping threshold as the trainer uses it (``grad_clip=0``: no clipping)."""
    return tc.grad_clip if tc.grad_clip > 0 else float("inf")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Marks:
    """Accumulates the time since the previous mark under a name (no-op without a dict)."""

    def __init__(self, timings: dict | None):
        self.timings, self.t = timings, time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.timings is None:
            return
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.t
        self.t = now


def trainer_round(trainer: Trainer, steps: int) -> float:
    """Seconds of ``fit()`` for ``steps`` more steps (its closing checkpoint skipped)."""
    trainer.tc.max_steps = trainer.step + steps
    _sync(trainer.device)
    t0 = time.perf_counter()
    trainer.fit()
    _sync(trainer.device)
    return time.perf_counter() - t0


def trainer_parts(trainer: Trainer, steps: int) -> dict:
    """The parts of the trainer's step, timed separately (the code of ``fit`` / ``_train_step``
    taken apart: the same calls, one after another)."""
    t, tc = {}, trainer.tc
    for _ in range(steps):
        mark = _Marks(t)
        trainer.model.train()
        lr = learning_rate(tc, trainer.step, 0.5)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        mark("schedule")
        batch = trainer.windows.next_batch().to(trainer.device)
        mark("data")
        out = trainer.process.loss(trainer.model, batch)
        mark("forward")
        out.loss.backward()
        mark("backward")
        norm = nn.utils.clip_grad_norm_(trainer.raw_model.parameters(), _clip(tc))
        mark("clip")
        loss, norm_value = torch.stack([out.loss.detach().float(), norm.float()]).tolist()
        ok = math.isfinite(loss) and math.isfinite(norm_value)
        metrics = {**out.metrics, "grad_norm": norm_value}
        mark("host_copy")
        trainer.optimizer.step()
        mark("optimizer")
        if trainer.ema is not None:
            trainer.ema.update(trainer.raw_model)
        mark("ema")
        trainer.optimizer.zero_grad(set_to_none=True)
        mark("zero_grad")
        trainer.step += 1
        trainer._after_step(loss, lr, metrics, ok)
        mark("after_step")
    return t


def bare_parts(bare: BareLoop, steps: int) -> dict:
    t: dict = {}
    for _ in range(steps):
        bare.train_step(t)
    return t


def measure(preset: str, overrides: list[str], rounds: int, round_steps: int, warmup: int,
            part_steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(preset, overrides + [f"out_dir={tmp}/run", "train.max_steps=1",
                                               "train.max_minutes=0", "train.eval_interval=0",
                                               "train.ckpt_interval=1000000000"])
        trainer = Trainer(cfg, Path(tmp) / "run", show=True)
        trainer.save_checkpoint = lambda: None      # fit() writes one at its end; a run, every N steps
        bare = BareLoop(trainer)
        if cfg.process.name == "autoregressive":   # the hand-written loss is the process's
            x = bare.get_batch()
            with torch.no_grad():
                mine, theirs = bare.loss(x), trainer.process.loss(bare.model, x).loss
            assert torch.allclose(mine, theirs, rtol=1e-5), (float(mine), float(theirs))
        else:                                      # another process: use its loss as it is
            bare.loss = lambda x: trainer.process.loss(bare.model, x).loss
        for _ in range(warmup):
            bare.train_step()
        trainer_round(trainer, warmup)
        tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len
        bare_s, trainer_s = [], []
        print_every = max(1, rounds // 10)
        for r in range(rounds):
            _sync(bare.device)
            t0 = time.perf_counter()
            for _ in range(round_steps):
                bare.train_step()
            _sync(bare.device)
            bare_s.append(time.perf_counter() - t0)
            trainer_s.append(trainer_round(trainer, round_steps))
            if r % print_every == 0 or r == rounds - 1:
                print(f"round {r}: bare {tokens * round_steps / bare_s[-1]:,.0f} tok/s, trainer "
                      f"{tokens * round_steps / trainer_s[-1]:,.0f} tok/s", file=sys.stderr, flush=True)
        parts_bare, parts_trainer = {}, {}
        for _ in range(part_steps):                  # interleaved step by step too
            for k, v in bare_parts(bare, 1).items():
                parts_bare[k] = parts_bare.get(k, 0.0) + v
            for k, v in trainer_parts(trainer, 1).items():
                parts_trainer[k] = parts_trainer.get(k, 0.0) + v
        n_parts = part_steps
        bare_tok_s = tokens * round_steps * rounds / sum(bare_s)
        trainer_tok_s = tokens * round_steps * rounds / sum(trainer_s)
        per_round = [b / t for b, t in zip(bare_s, trainer_s)]
        return {
            "preset": preset, "overrides": overrides, "tokens_per_step": tokens,
            "rounds": rounds, "round_steps": round_steps, "warmup": warmup,
            "bare_tokens_per_s": bare_tok_s, "trainer_tokens_per_s": trainer_tok_s,
            "ratio_trainer_over_bare": trainer_tok_s / bare_tok_s,
            "ratio_per_round": per_round,
            "ratio_median_round": statistics.median(per_round),
            "ratio_quartiles_round": statistics.quantiles(per_round, n=4) if rounds > 1 else None,
            "ms_per_part_bare": {k: 1000 * v / n_parts for k, v in parts_bare.items()},
            "ms_per_part_trainer": {k: 1000 * v / n_parts for k, v in parts_trainer.items()},
            "ema": cfg.train.ema_decay > 0, "log_interval": cfg.train.log_interval,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="shakespeare_char_ar")
    ap.add_argument("--set", action="append", default=[], help="key=value override (repeatable)")
    ap.add_argument("--rounds", type=int, default=40, help="alternating rounds of each loop")
    ap.add_argument("--round-steps", type=int, default=2, help="optimiser steps per round")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps of each loop first")
    ap.add_argument("--part-steps", type=int, default=20,
                    help="steps of each loop timed part by part (alternating step by step)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: THUNDERDLM_THREADS, else all cores)")
    ap.add_argument("--out", default="bench/results/trainer_overhead.json")
    args = ap.parse_args()
    if args.threads:
        os.environ["THUNDERDLM_THREADS"] = str(args.threads)
    setup_runtime()
    res = measure(args.preset, args.set, args.rounds, args.round_steps, args.warmup, args.part_steps)
    res["threads"] = torch.get_num_threads()
    write_bench_json(res, args.out, Path(__file__).parent)


if __name__ == "__main__":
    main()
