"""Run by test_distributed.py under torchrun: train a few steps, then dump this rank's weights.

argv: data folder, output folder, and optionally a JSON object of config sections that replace the
default tiny DDiT's (another process or backbone: the embedding process, the hf adapter)."""
import hashlib
import json
import sys
from pathlib import Path

from thunderdlm.data import RandomWindows
from thunderdlm.run_config import RunConfig
from thunderdlm.train import Trainer

data_dir, out = sys.argv[1], Path(sys.argv[2])
sections = {
    "data": {"dir": data_dir, "seq_len": 16},
    "model": {"name": "ddit", "n_layer": 1, "n_head": 2, "n_embd": 16, "cond_dim": 16},
    "train": {"batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "max_steps": 4, "eval_interval": 0,
              "ckpt_interval": 2, "log_interval": 1},
    "seed": 3}
sections.update(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
cfg = RunConfig.from_data(sections)
trainer = Trainer(cfg, out / "run", show=False)
first_batch = RandomWindows(trainer.data.split("train"), 16, 4, cfg.seed, trainer.rank).next_batch()
trainer.fit()
digest = hashlib.sha256()
for name, p in sorted(trainer.raw_model.state_dict().items()):
    digest.update(name.encode())
    digest.update(p.detach().cpu().numpy().tobytes())
(out / f"rank{trainer.rank}.txt").write_text(f"{digest.hexdigest()} {first_batch.sum().item()}")
