"""The trainer: knows only ``process.loss(model, batch)``.

One loop that reads in one sitting: AdamW with warm-up + cosine decay, gradient accumulation and
clipping, EMA, periodic evaluation of the validation bound and periodic samples, metrics to
``RUN/metrics.jsonl`` and the trackers of ``train.log_to``, atomic safetensors checkpoints with
exact resume (weights, optimiser, RNG and data position), DDP or FSDP2 (``train.distributed``, set
up in ``distributed.py``) under ``torchrun``, bf16 autocast on GPU only. The EMA is ``ema.py``,
the metric sinks ``tracking.py``; checkpoint files and run folders are ``checkpoint.py`` and
``runfolder.py``.

The budget is ``train.max_steps`` and/or ``train.max_minutes`` of *training* time (evaluation,
sampling and checkpoint time are not counted, nor are they in the tokens/s figure). With a time
budget, the learning-rate schedule follows the fraction of the budget used, so a run of any speed
ends its cosine decay when its time is up.
"""
from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from thunderdlm import checkpoint as ck
from thunderdlm.api import DiffusionLM
from thunderdlm.config import check
from thunderdlm.data import RandomWindows, TokenData, eval_windows
from thunderdlm.display import TrainDisplay
from thunderdlm.errors import CheckpointError, TrainingError
from thunderdlm.evaluate import likelihood_bound
from thunderdlm.models.hf_io import check_tokenizer
from thunderdlm.processes import build_process
from thunderdlm.run_config import RunConfig, check_resume_config, read_run_config
from thunderdlm.runfolder import RunFolder
from thunderdlm.runtime import resolve_device, setup_runtime
from thunderdlm.train.distributed import (GatheredOptimizer, barrier, fsdp_errors, full_state_dicts,
                                          init_distributed, load_full_state_dicts, rank_device,
                                          shard_model)
from thunderdlm.train.ema import EMA
from thunderdlm.train.tracking import Tracker


@dataclass
class TrainSummary:
    run_dir: Path
    step: int
    tokens: int
    train_seconds: float
    last_loss: float
    stopped_by: str            # "budget" | "interrupt"


def train_step_hooks(model: nn.Module) -> list:
    """The ``on_train_step(step)`` methods of modules with a training-step schedule (e.g. the hf
    adapter's attention annealing), found once; the trainer calls them with the step about to run
    (resume restores ``step``, so they resume too)."""
    hooks = (getattr(module, "on_train_step", None) for module in model.modules())
    return [hook for hook in hooks if callable(hook)]


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM during training: the first asks the loop to stop at the next
    step boundary, where the weights, optimiser, RNG and data position belong to the same step, so
    the checkpoint written then resumes bit-identically (a KeyboardInterrupt raised inside a step
    would leave the RNG and the data sampler one step ahead of the weights). SIGTERM is what a
    scheduler sends before it kills a job (SLURM preemption, a container stop, ``kill PID``).
    A second signal interrupts at once; one within ``REPEAT_S`` of the first is the same request
    (under torchrun the terminal signals every rank and the agent then forwards its own). Only the
    main thread can install a signal handler; elsewhere SIGINT stays a KeyboardInterrupt and
    SIGTERM ends the process. A signal that is ignored stays ignored, and a SIGTERM handler that
    someone else installed is left alone."""

    REPEAT_S = 2.0
    SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self, note):
        self.requested, self._note, self._first = False, note, 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.SIGNALS:
            current = signal.getsignal(sig)
            # not where it is ignored (a background job of a script, nohup-like launchers), and
            # SIGTERM only where nobody else handles it
            if current is signal.SIG_IGN or (sig == signal.SIGTERM and current is not signal.SIG_DFL):
                continue
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if time.monotonic() - self._first > self.REPEAT_S:
                raise KeyboardInterrupt
            return
        self.requested, self._first = True, time.monotonic()
        name = self.SIGNALS.get(signum, f"signal {signum}")
        self._note(f"{name}: stopping after this step and saving a checkpoint "
                   f"({name} again to stop at once, without one)")

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


# ---- optimiser and schedule ------------------------------------------------------------------------

def make_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW; matrices and embeddings decay, vectors (norms, biases) do not (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=next(model.parameters()).is_cuda)


def learning_rate(cfg, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from lr to min_lr over the budget."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * p))


def budget_progress(cfg, step: int, seconds: float) -> float:
    """Fraction of the budget used (the larger of steps and time when both are set)."""
    parts = []
    if cfg.max_steps > 0:
        parts.append(step / cfg.max_steps)
    if cfg.max_minutes > 0:
        parts.append(seconds / (60.0 * cfg.max_minutes))
    return max(parts)


# ---- the trainer ----------------------------------------------------------------------------------

class Trainer:
    """Builds everything from a RunConfig, then ``fit()`` runs the loop."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, show: bool = True):
        setup_runtime()
        self.cfg, self.tc = cfg, cfg.train
        self.device = rank_device(resolve_device(self.tc.device))
        self.rank, self.world = init_distributed(self.device)
        self.fsdp = self.world > 1 and self.tc.distributed == "fsdp"
        self.is_main = self.rank == 0
        torch.manual_seed(cfg.seed)   # the same initial weights on every rank
        self.data = TokenData(cfg.data.dir)
        self.folder = RunFolder(Path(run_dir))
        check(self.tc.sample_length <= cfg.data.seq_len, "train.sample_length",
              f"{self.tc.sample_length} tokens is longer than the context (data.seq_len={cfg.data.seq_len})")
        self.tracker = Tracker(self.folder, cfg, enabled=self.is_main)   # a missing tracker fails here
        self.resumed = resume
        self.process = build_process(cfg.process, self.data.vocab_size)
        if cfg.model.name == "hf":
            check_tokenizer(cfg.model.path, self.data.tokenizer)
        net = self.process.build_network(cfg.model, cfg.data.seq_len)
        # FSDP2 replaces the parameters by sharded DTensors (moving only the shards to the device),
        # so it wraps before the optimiser is built on them; DDP wraps after a checkpoint is loaded
        self.raw_model = net if self.fsdp else net.to(self.device)
        self.model = self._wrap(self.raw_model) if self.fsdp else self.raw_model
        self.optimizer = make_optimizer(self.raw_model, self.tc)
        self.step_hooks = train_step_hooks(self.raw_model)
        self.ema = EMA(self.raw_model, self.tc.ema_decay) if self.tc.ema_decay > 0 else None
        self.windows = RandomWindows(self.data.split("train"), cfg.data.seq_len, self.tc.batch_size,
                                     cfg.seed, self.rank)
        self.val = eval_windows(self.data.split("val"), cfg.data.seq_len, self.tc.eval_windows)
        self.step, self.tokens, self.train_seconds = 0, 0, 0.0
        # rank 0 holds the run folder's lock until fit() ends (the kernel drops it if we die)
        self.lock = self.folder.claim(new=not resume) if self.is_main else None
        try:
            if resume:
                self._resume()
            elif self.is_main:
                self.folder.create(cfg, self.data)
        except BaseException:
            self.release()
            raise
        barrier(self.world)
        if not self.fsdp:
            self.model = self._wrap(self.raw_model)
        self.display = TrainDisplay(self.tc, enabled=show and self.is_main)
        self.stop_request, self.stop_agreed = StopRequest(self.display.note), False  # fit() arms it
        self.autocast = self._autocast()

    def release(self) -> None:
        """Let another training use the run folder (fit() calls it when it ends)."""
        if self.lock is not None:
            self.lock.release()

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.fsdp:
            shard_model(model, self.device, self.world)   # in place: raw_model is the sharded root
        if self.tc.compile:
            model = torch.compile(model)
        if self.world > 1 and not self.fsdp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def _autocast(self):
        use_bf16 = self.tc.precision == "bf16" or (self.tc.precision == "auto" and self.device.type == "cuda")
        if use_bf16 and self.device.type == "cuda":
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(self) -> TrainSummary:
        try:
            with StopRequest(self.display.note) as self.stop_request:
                self.tracker.start(self.step, self.resumed)
                return self._fit()
        finally:
            self.tracker.close()
            self.release()

    def _fit(self) -> TrainSummary:
        stopped_by, loss = "budget", float("nan")
        bad, mid_step = 0, False
        self.stop_agreed = False     # under DDP/FSDP: every rank saw the request (see _train_step)
        if budget_progress(self.tc, self.step, self.train_seconds) >= 1.0 and self.is_main:
            print(f"'{self.folder.path}' is already at its budget (step {self.step}): nothing to train; "
                  "raise train.max_steps= or train.max_minutes= to continue it")
        self.display.start(self.step, budget_progress(self.tc, self.step, self.train_seconds))
        try:
            while budget_progress(self.tc, self.step, self.train_seconds) < 1.0:
                if self.stop_agreed if self.world > 1 else self.stop_request.requested:
                    stopped_by = "interrupt"
                    break
                mid_step = True
                t0 = time.perf_counter()
                progress = budget_progress(self.tc, self.step, self.train_seconds)
                lr = learning_rate(self.tc, self.step, progress)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                for hook in self.step_hooks:
                    hook(self.step)
                loss, metrics, ok = self._train_step()
                bad = 0 if ok else bad + 1
                if bad > self.tc.max_bad_steps:
                    raise TrainingError(self._non_finite_message(bad))
                self.train_seconds += time.perf_counter() - t0
                if ok:
                    self.step += 1
                    self.tokens += self.tc.batch_size * self.tc.grad_accum * self.cfg.data.seq_len * self.world
                mid_step = False     # weights, optimiser, RNG and data position agree again
                self._after_step(loss, lr, metrics, ok)
        except KeyboardInterrupt:
            stopped_by = "interrupt"
        finally:
            self.display.stop()
        if stopped_by == "interrupt" and mid_step:
            # inside a step the RNG and data sampler are ahead of the weights: a checkpoint of that
            # state would not resume exactly, so keep the last one written at a step boundary
            if self.is_main:
                print(f"interrupted inside step {self.step + 1}: no checkpoint written (it would not "
                      f"resume exactly); {self._last_checkpoint_note()}")
            return TrainSummary(self.folder.path, self.step, self.tokens, self.train_seconds, loss, stopped_by)
        self.save_checkpoint()
        if stopped_by == "interrupt" and self.is_main:
            print(f"interrupted at step {self.step}: checkpoint saved; continue with "
                  f"`thunderdlm train --resume {self.folder.path}`")
        return TrainSummary(self.folder.path, self.step, self.tokens, self.train_seconds, loss, stopped_by)

    def _last_checkpoint_note(self) -> str:
        ckpts = ck.list_checkpoints(self.folder.path)
        if not ckpts:
            return "no checkpoint was written yet, so the run must start again"
        return (f"the last checkpoint, '{ckpts[-1]}', is kept; continue with "
                f"`thunderdlm train --resume {self.folder.path}`")

    def _non_finite_message(self, bad: int) -> str:
        return (f"the loss was non-finite for {bad} consecutive step(s) (at step {self.step}, "
                f"train.max_bad_steps={self.tc.max_bad_steps}); stopped without saving; "
                f"{self._last_checkpoint_note()}. Lower train.lr or check the data.")

    def _train_step(self) -> tuple[float, dict, bool]:
        """One optimiser step over grad_accum micro-batches; (loss, metrics, ok)."""
        self.model.train()
        losses, metrics = [], {}
        for micro in range(self.tc.grad_accum):
            batch = self.windows.next_batch().to(self.device, non_blocking=True)
            last = micro == self.tc.grad_accum - 1
            if self.fsdp:  # FSDP2's no_sync: accumulate unsharded grads, reduce-scatter on the last
                self.raw_model.set_requires_gradient_sync(last)
            sync = nullcontext() if (self.world == 1 or self.fsdp or last) else self.model.no_sync()
            with sync, self.autocast(), fsdp_errors(self.fsdp):
                out = self.process.loss(self.model, batch)
                (out.loss / self.tc.grad_accum).backward()
            losses.append(out.loss.detach().float())
            metrics = out.metrics
        norm = nn.utils.clip_grad_norm_(self.raw_model.parameters(),
                                        self.tc.grad_clip if self.tc.grad_clip > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # FSDP: a replicated DTensor, the norm over every shard
            norm = norm.full_tensor()
        # one device → host copy (a GPU sync) per step, not one per micro-batch plus two for the
        # norm: the same floats .item() gave (fp32 losses), summed in the same order
        *micro_losses, norm_value = torch.stack([*losses, norm.detach().float()]).tolist()
        total = 0.0
        for value in micro_losses:
            total += value / self.tc.grad_accum
        ok = math.isfinite(total) and math.isfinite(norm_value)
        if self.world > 1:  # every rank must agree to skip (or to stop), or the weights drift apart
            going_on = not self.stop_request.requested
            flag = torch.tensor([1.0 if ok else 0.0, 1.0 if going_on else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok, self.stop_agreed = bool(flag[0].item() > 0), bool(flag[1].item() == 0)
        if ok:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.raw_model)
        elif self.is_main:
            print(f"warning: non-finite loss/gradient at step {self.step} (loss={total}); step skipped")
        self.optimizer.zero_grad(set_to_none=True)
        return total, {**metrics, "grad_norm": norm_value}, ok

    def _after_step(self, loss: float, lr: float, metrics: dict, ok: bool) -> None:
        tok_s = self.tokens / max(self.train_seconds, 1e-9)
        progress = budget_progress(self.tc, self.step, self.train_seconds)
        if ok and self.step % self.tc.log_interval == 0 and self.is_main:
            row = {"step": self.step, "loss": loss, "lr": lr, "tokens": self.tokens,
                   "train_seconds": round(self.train_seconds, 3), "tok_s": round(tok_s, 1), **metrics}
            self.tracker.log(row)
        self.display.update(self.step, loss, tok_s, progress, self.train_seconds)
        if ok and self.tc.eval_interval and self.step % self.tc.eval_interval == 0:
            self.evaluate()
        if ok and self.tc.sample_interval and self.step % self.tc.sample_interval == 0:
            self.sample()
        if ok and self.step % self.tc.ckpt_interval == 0:
            self.save_checkpoint()

    # ---- evaluation and checkpoints ----------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """The weights used for evaluation: the EMA when enabled (a copy whose random init,
        overwritten at once, must not draw from the training RNG: a run that evaluates would
        otherwise follow another trajectory than one that does not)."""
        if self.ema is None:
            return self.raw_model
        with torch.random.fork_rng(devices=[]):    # built on the CPU: only the CPU RNG is touched
            model = self.process.build_network(self.cfg.model, self.cfg.data.seq_len)
        model.load_state_dict(self.ema.state_dict(self.raw_model))
        return model.to(self.device)

    def evaluate(self) -> dict | None:
        # Under FSDP every forward all-gathers the weights from all ranks, so every rank runs the
        # same evaluation (the same windows and seeds, hence the same numbers) and rank 0 logs it;
        # gathering a full copy onto rank 0 instead would need the whole model on one device.
        if not (self.is_main or self.fsdp):
            return None
        gen = torch.Generator(device=self.device).manual_seed(0)  # the same t and masks every time
        with self.autocast(), fsdp_errors(self.fsdp):
            res = likelihood_bound(self.process, self.eval_model(), self.val.to(self.device),
                                   t_samples=1, batch_size=self.tc.batch_size, generator=gen,
                                   chars_per_token=self.data.chars_per_token("val"))
        if self.fsdp:
            self.raw_model.reshard()   # the root keeps its gathered weights after a forward: free them
        if not self.is_main:
            return None
        row = {"step": self.step, "val_nelbo": res["nats_per_token"], "val_se": res["stderr"],
               "val_bpc": res["bits_per_char"], "train_seconds": round(self.train_seconds, 3)}
        self.tracker.log(row)
        self.display.note(f"step {self.step}: val bound {res['nats_per_token']:.4f} ± {res['stderr']:.4f} nats/token")
        return row

    def sample(self) -> list[str] | None:
        """``train.sample_count`` samples at ``train.sample_seed`` with the evaluation weights, in
        eval mode, written by rank 0 to ``RUN/samples/`` and the trackers. The training state is
        left as it was: the network's mode is restored and so is the global RNG (CPU, and this
        GPU) whatever the sampler draws from it, so a run with samples follows the same
        trajectory as one without (tested). Under FSDP every rank runs it (each forward
        all-gathers the weights); rank 0 writes."""
        if not (self.is_main or self.fsdp):
            return None
        tc = self.tc
        gpus = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus), self.autocast(), fsdp_errors(self.fsdp):
            model = self.eval_model()
            was_training = model.training
            model.eval()
            try:
                lm = DiffusionLM(self.folder.path, self.cfg, model, self.process, self.data.tokenizer,
                                 self.device, checkpoint=None)
                texts, _ = lm.sample(n=tc.sample_count, length=tc.sample_length or None,
                                     steps=tc.sample_steps, seed=tc.sample_seed)
            finally:
                model.train(was_training)
        if self.fsdp:
            self.raw_model.reshard()
        if not self.is_main:
            return None
        self.tracker.samples(self.step, texts)
        self.display.note(f"step {self.step}: {len(texts)} samples → {self.folder.path / 'samples'}")
        return texts

    def save_checkpoint(self) -> None:
        try:
            self._save_checkpoint()
        except (OSError, CheckpointError) as e:   # disk full, ulimit -f, a folder made read-only
            if self.is_main:
                for tmp in (self.folder.path / ck.CKPT_DIR).glob(".tmp-step_*"):
                    shutil.rmtree(tmp, ignore_errors=True)
            detail = f"{e.strerror}: '{e.filename}'" if isinstance(e, OSError) and e.strerror else str(e)
            raise CheckpointError(f"writing the checkpoint of step {self.step} failed ({detail}); "
                                  f"{self._last_checkpoint_note()}") from None

    def _save_checkpoint(self) -> None:
        barrier(self.world)
        tmp = ck.begin_checkpoint(self.folder.path, self.step) if self.is_main else None
        barrier(self.world)
        tmp = tmp or self.folder.path / ck.CKPT_DIR / f".tmp-{ck.checkpoint_name(self.step)}"
        ck.save_tensors(tmp / f"rng_rank{self.rank}.safetensors", self._rng_state())
        barrier(self.world)
        if self.fsdp:  # gathered on every rank (collectives), kept by rank 0; no EMA under FSDP
            model_sd, optim_sd = full_state_dicts(self.raw_model, self.optimizer)
        if self.is_main:
            state = {"step": self.step, "tokens": self.tokens, "train_seconds": self.train_seconds,
                     "world_size": self.world, "seed": self.cfg.seed}
            if self.fsdp:
                ck.write_model_files(tmp, model_sd, None, GatheredOptimizer(optim_sd), state)
            else:
                ema = self.ema.state_dict(self.raw_model) if self.ema is not None else None
                ck.write_model_files(tmp, self.raw_model.state_dict(), ema, self.optimizer, state)
            ck.commit_checkpoint(self.folder.path, tmp, self.step, self.tc.keep_checkpoints)
        barrier(self.world)

    def _rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        state.update({f"data.{k}": v for k, v in self.windows.state_dict().items()})
        return state

    def _resume(self) -> None:
        ckpt = ck.latest_checkpoint(self.folder.path)
        state = ck.read_state(ckpt)
        if state.get("world_size", 1) != self.world:
            raise CheckpointError(f"'{ckpt}' was written by {state.get('world_size')} processes; "
                                  f"resume it with the same number (got {self.world})")
        self.folder.check_tokenizer(self.data)
        if not (ckpt / "optimizer.json").is_file():
            raise CheckpointError(
                f"'{ckpt}' holds weights only (no optimizer state or RNG: an export, or a copied "
                f"checkpoint), so it cannot be resumed exactly; start a new run from it instead "
                f"(for an export: model.path={self.folder.path / 'hf'})")
        groups = ck.read_optimizer_groups(ckpt)
        if self.fsdp:  # every rank reads the full files on the CPU and keeps its shards of them
            opt_t = ck.load_tensors(ckpt / "optimizer.safetensors")
            load_full_state_dicts(self.raw_model, self.optimizer, ck.load_tensors(ckpt / "model.safetensors"),
                                  ck.optimizer_from_flat(opt_t, groups))
        else:
            weights = ck.load_tensors(ckpt / "model.safetensors", self.device)
            opt_t = ck.load_tensors(ckpt / "optimizer.safetensors", self.device)
            try:
                self.raw_model.load_state_dict(weights)
                self.optimizer.load_state_dict(ck.optimizer_from_flat(opt_t, groups))
            except (RuntimeError, ValueError, KeyError) as e:
                raise CheckpointError(f"'{ckpt}' does not match the model in '{self.folder.path}/config.json': "
                                      f"{str(e).splitlines()[0]}") from None
        if self.ema is not None:
            self.ema.load(ck.load_tensors(ckpt / "ema.safetensors", self.device))
        rng = ck.load_tensors(ckpt / f"rng_rank{self.rank}.safetensors")
        torch.set_rng_state(rng["torch_cpu"])
        if "torch_cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["torch_cuda"], self.device)
        self.windows.load_state_dict({k[5:]: v for k, v in rng.items() if k.startswith("data.")})
        self.step, self.tokens, self.train_seconds = state["step"], state["tokens"], state["train_seconds"]
        if self.is_main:
            self.folder.truncate_metrics(self.step)
            self.folder.write_config(self.cfg)       # the overrides, now that they proved usable
            print(f"resuming {self.folder.path} from {ckpt.name} (step {self.step})")


def train(cfg: RunConfig, run_dir: str | Path | None = None, show: bool = True) -> TrainSummary:
    """Train a new run (``run_dir`` defaults to ``cfg.out_dir``)."""
    return Trainer(cfg, Path(run_dir or cfg.out_dir), resume=False, show=show).fit()


def resume(run_dir: str | Path, overrides: list[str] | None = None, show: bool = True) -> TrainSummary:
    """Continue a run from its latest checkpoint (``overrides`` may extend the budget)."""
    cfg = read_run_config(Path(run_dir), overrides)
    if overrides:   # config.json is rewritten only once the checkpoint has loaded (Trainer._resume)
        check_resume_config(read_run_config(Path(run_dir)), cfg)
    return Trainer(cfg, Path(run_dir), resume=True, show=show).fit()
