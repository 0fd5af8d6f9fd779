"""``train`` config section: optimiser, schedule, budget, evaluation and checkpoint cadence,
trackers and periodic samples."""
from __future__ import annotations

import math
from dataclasses import dataclass

from thunderdlm.config import check, param

TRACKERS = ("tensorboard", "wandb")   # train.log_to: see train/tracking.py


@dataclass
class TrainConfig:
    batch_size: int = param(64, help="windows per optimiser step per process (before accumulation)")
    grad_accum: int = param(1, help="micro-batches accumulated per optimiser step")
    lr: float = param(1e-3, help="peak learning rate (AdamW)")
    min_lr: float = param(1e-4, help="learning rate at the end of the cosine decay")
    warmup_steps: int = param(100, help="linear warm-up steps")
    weight_decay: float = param(0.1, help="AdamW weight decay on matrices (not norms/biases)")
    beta1: float = param(0.9, help="AdamW β1")
    beta2: float = param(0.99, help="AdamW β2")
    grad_clip: float = param(1.0, help="clip the global gradient norm to this (0 = off)")
    max_steps: int = param(0, help="stop after this many optimiser steps (0 = no step limit)")
    max_minutes: float = param(0.0, help="stop after this much training wall time (0 = no limit)")
    ema_decay: float = param(0.0, help="EMA of the weights used for eval/sampling (0 = off)")
    eval_interval: int = param(250, help="evaluate the validation bound every N steps (0 = never)")
    eval_windows: int = param(128, help="validation windows used by the periodic evaluation")
    log_interval: int = param(10, help="log the training loss every N steps")
    ckpt_interval: int = param(500, help="write a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = param(2, help="how many recent checkpoints to keep")
    max_bad_steps: int = param(5, help="consecutive non-finite losses tolerated (skipped) before stopping")
    device: str = param("auto", help="auto | cpu | cuda | cuda:N")
    precision: str = param("auto", help="auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16",
                           choices=("auto", "fp32", "bf16"))
    compile: bool = param(False, help="torch.compile the model (GPU runs)")
    distributed: str = param("ddp", choices=("ddp", "fsdp"),
                             help="scale-out under torchrun (ignored by a single process): ddp "
                                  "(every rank holds the whole model) | fsdp (FSDP2: weights, "
                                  "gradients and AdamW moments sharded over the ranks, one unit per "
                                  "block; needs train.ema_decay=0)")
    log_to: list[str] = param(default_factory=list,
                              help="trackers besides RUN/metrics.jsonl (always written): tensorboard "
                                   "(RUN/tensorboard) and/or wandb (RUN/wandb), e.g. "
                                   "train.log_to=[tensorboard,wandb]; needs pip install 'thunderdlm[track]'")
    wandb_project: str = param("thunderdlm", help="W&B project of the run (train.log_to=[wandb])")
    wandb_mode: str = param("offline", choices=("offline", "online"),
                            help="offline: W&B writes RUN/wandb only, no network or login (upload "
                                 "later with `wandb sync RUN/wandb/offline-run-*`) | online: stream to W&B")
    sample_interval: int = param(0, help="every N steps draw train.sample_count samples at a fixed seed "
                                         "with the evaluation weights (the EMA when on) into "
                                         "RUN/samples/step_N.txt and the trackers (0 = never)")
    sample_count: int = param(4, help="samples drawn every train.sample_interval steps (one batch)")
    sample_length: int = param(0, help="tokens per periodic sample (0 = the whole context, data.seq_len)")
    sample_steps: int = param(64, help="reverse steps (network evaluations at most) per periodic sample")
    sample_seed: int = param(0, help="seed of the periodic samples: the same noise every time, so "
                                     "successive files show one sample improving")

    def __post_init__(self):
        for name in ("batch_size", "grad_accum"):
            check(getattr(self, name) >= 1, f"train.{name}", f"must be ≥ 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "max_steps", "max_minutes", "eval_interval", "max_bad_steps"):
            value = getattr(self, name)
            check(value >= 0, f"train.{name}", f"must be ≥ 0, got {value}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "max_minutes", "ema_decay"):
            value = getattr(self, name)
            check(math.isfinite(value), f"train.{name}", f"must be a finite number, got {value}")
        check(self.eval_windows >= 1, "train.eval_windows", f"must be ≥ 1, got {self.eval_windows}")
        check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1",
              f"the AdamW betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        check(0 <= self.min_lr <= self.lr, "train.min_lr", f"must be in [0, train.lr], got {self.min_lr}")
        check(self.max_steps > 0 or self.max_minutes > 0, "train.max_steps",
              "set a budget: train.max_steps > 0 or train.max_minutes > 0")
        check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        check(self.ckpt_interval >= 1, "train.ckpt_interval", f"must be ≥ 1, got {self.ckpt_interval}")
        check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be ≥ 1")
        check(self.log_interval >= 1, "train.log_interval", "must be ≥ 1")
        check(self.grad_clip >= 0, "train.grad_clip", "must be ≥ 0")
        check(self.distributed in ("ddp", "fsdp"), "train.distributed",
              f"must be 'ddp' or 'fsdp', got {self.distributed!r}")
        check(len(set(self.log_to)) == len(self.log_to), "train.log_to",
              f"names a tracker twice: {self.log_to}")
        for name in self.log_to:
            check(name in TRACKERS, "train.log_to",
                  f"{name!r} is not a tracker; choose from {list(TRACKERS)} (RUN/metrics.jsonl is always written)")
        for name in ("sample_interval", "sample_length"):
            check(getattr(self, name) >= 0, f"train.{name}", f"must be ≥ 0, got {getattr(self, name)}")
        for name in ("sample_count", "sample_steps"):
            check(getattr(self, name) >= 1, f"train.{name}", f"must be ≥ 1, got {getattr(self, name)}")
        check(self.sample_seed >= 0, "train.sample_seed", f"must be ≥ 0, got {self.sample_seed}")
        check(not (self.distributed == "fsdp" and self.ema_decay > 0), "train.ema_decay",
              "the EMA is not supported with train.distributed=fsdp (it would keep a full copy of "
              "the weights on every rank); set train.ema_decay=0, or use train.distributed=ddp")
