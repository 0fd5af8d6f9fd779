"""Run by test_distributed.py under torchrun: train a few steps, then dump this rank's weights."""
import hashlib
import sys
from pathlib import Path

from thunderdlm.data import RandomWindows
from thunderdlm.run_config import RunConfig
from thunderdlm.train import Trainer

data_dir, out = sys.argv[1], Path(sys.argv[2])
cfg = RunConfig.from_data({
    "data": {"dir": data_dir, "seq_len": 16},
    "model": {"name": "ddit", "n_layer": 1, "n_head": 2, "n_embd": 16, "cond_dim": 16},
    "train": {"batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "max_steps": 4, "eval_interval": 0,
              "ckpt_interval": 2, "log_interval": 1},
    "seed": 3})
trainer = Trainer(cfg, out / "run", show=False)
first_batch = RandomWindows(trainer.data.split("train"), 16, 4, cfg.seed, trainer.rank).next_batch()
trainer.fit()
digest = hashlib.sha256()
for name, p in sorted(trainer.raw_model.state_dict().items()):
    digest.update(name.encode())
    digest.update(p.detach().cpu().numpy().tobytes())
(out / f"rank{trainer.rank}.txt").write_text(f"{digest.hexdigest()} {first_batch.sum().item()}")
