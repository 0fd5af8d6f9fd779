"""Run by test_distributed.py under torchrun: the tiny DDiT of ddp_worker.py, trained to 8 steps
(mode "ref"), interrupted by SIGINT inside step 4 (mode "interrupt": rank 1 gets the terminal's
Ctrl-C and torchrun's forwarded one, rank 0 only the terminal's, a little later), or resumed
(mode "resume")."""
import os
import signal
import sys
import time
from pathlib import Path

from thunderdlm.run_config import RunConfig
from thunderdlm.train import Trainer, resume

data_dir, run, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
if mode == "resume":
    resume(run, show=False)
    sys.exit(0)
cfg = RunConfig.from_data({
    "data": {"dir": data_dir, "seq_len": 16},
    "model": {"name": "ddit", "n_layer": 1, "n_head": 2, "n_embd": 16, "cond_dim": 16},
    "train": {"batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "max_steps": 8, "eval_interval": 0,
              "ckpt_interval": 100, "log_interval": 1},
    "seed": 3})
trainer = Trainer(cfg, run, show=False)
if mode == "interrupt":
    real = trainer.process.loss

    def loss(model, x0):
        out = real(model, x0)
        if trainer.step == 3:
            if trainer.rank == 0:
                time.sleep(0.2)
            for _ in range(2 if trainer.rank == 1 else 1):
                os.kill(os.getpid(), signal.SIGINT)
        return out
    trainer.process.loss = loss
summary = trainer.fit()
(run / f"stopped{trainer.rank}.txt").write_text(f"{summary.stopped_by} {summary.step}")
