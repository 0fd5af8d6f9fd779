"""Where training metrics and periodic samples go: the one place the trainer writes them.

The trainer hands every row (a training step or an evaluation) and every batch of periodic samples
to a :class:`Tracker`, which passes them to its sinks:

- :class:`RunFolderSink` (always): ``RUN/metrics.jsonl``, one JSON object per row, which resume
  truncates and the benchmark reads, and ``RUN/samples/step_NNNNNNN.txt``;
- :class:`TensorBoardSink` (``train.log_to: [tensorboard]``): ``RUN/tensorboard/``, scalars
  ``train/<key>`` and ``val/<key>`` at the optimiser step, the samples as text;
- :class:`WandbSink` (``train.log_to: [wandb]``): ``RUN/wandb/``, offline unless
  ``train.wandb_mode=online`` (offline needs no network and no login; ``wandb sync RUN/wandb/*``
  uploads later); the run id is kept in ``RUN/wandb.json`` so ``--resume`` continues the same run.

Only rank 0 tracks. Resume continues the step numbering of every sink: TensorBoard is reopened
with ``purge_step`` = the checkpoint's step + 1, so the rows a killed run logged past its last
checkpoint are hidden (they are logged again, bit-identical, by the resumed run), as
``metrics.jsonl`` drops them; W&B keeps the run id (offline runs of one id are merged by
``wandb sync``).
"""
from __future__ import annotations

import importlib.util
import json
import math
import secrets
from pathlib import Path
from typing import Protocol

from thunderdlm.checkpoint import atomic_write_text
from thunderdlm.errors import ConfigError
from thunderdlm.runfolder import RunFolder

# the Python package each tracker imports (the pip extra `track` installs both)
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
SAMPLES_DIR = "samples"
WANDB_ID_FILE = "wandb.json"


class MetricSink(Protocol):
    def log(self, row: dict) -> None:
        """One row: ``step`` plus numbers (a training step) or ``val_*`` numbers (an evaluation)."""

    def samples(self, step: int, texts: list[str]) -> None:
        """The periodic samples drawn at ``step`` (the same seed every time)."""

    def close(self) -> None:
        """Flush and let go of files and processes."""


def check_trackers(log_to: list[str]) -> None:
    """A ConfigError naming ``train.log_to`` when a tracker's package is missing (before training)."""
    for name in log_to:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ConfigError(f"config field 'train.log_to': {name!r} needs the {_PACKAGES[name]} "
                              f"package, which is not installed; pip install 'thunderdlm[track]' "
                              f"(or drop {name} from train.log_to)")


def scalars(row: dict) -> dict[str, float]:
    """The row's finite numbers under tracker tags: ``val_nelbo`` → ``val/nelbo``, ``loss`` →
    ``train/loss`` (``step`` is the x axis, not a scalar)."""
    out = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        out[f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"] = float(value)
    return out


def samples_text(step: int, texts: list[str]) -> str:
    return "".join(f"=== sample {i + 1}/{len(texts)} at step {step} ===\n{text}\n\n"
                   for i, text in enumerate(texts))


class RunFolderSink:
    """``RUN/metrics.jsonl`` and ``RUN/samples/step_NNNNNNN.txt``: always written."""

    def __init__(self, folder: RunFolder):
        self.folder = folder

    def log(self, row: dict) -> None:
        self.folder.log(row)

    def samples(self, step: int, texts: list[str]) -> None:
        path = sample_file(self.folder.path, step)
        path.parent.mkdir(exist_ok=True)
        atomic_write_text(path, samples_text(step, texts))

    def close(self) -> None:
        """Nothing held open: each row and each samples file is written and closed as it arrives."""


def sample_file(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / SAMPLES_DIR / f"step_{step:07d}.txt"


class TensorBoardSink:
    """``RUN/tensorboard/``: one event file per training session. Each session purges the events
    of earlier files at or past its first step (``purge_step``): a resumed run hides what a killed
    one logged after its checkpoint, a new run in a reused folder hides the old run's curves."""

    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)

    def log(self, row: dict) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=row["step"])

    def samples(self, step: int, texts: list[str]) -> None:
        # TensorBoard renders text as markdown: indent each sample by 4 spaces (a code block)
        body = "\n\n".join(f"**sample {i + 1}**\n\n" + "\n".join("    " + line for line in t.splitlines())
                           for i, t in enumerate(texts))
        self.writer.add_text("samples", body, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """``RUN/wandb/``: a W&B run (offline by default) whose id lives in ``RUN/wandb.json``."""

    def __init__(self, run_dir: Path, config: dict, project: str, mode: str, resumed: bool):
        import wandb

        self.wandb = wandb
        id_file = Path(run_dir) / WANDB_ID_FILE
        run_id = json.loads(id_file.read_text())["id"] if resumed and id_file.exists() else None
        if run_id is None:
            run_id = secrets.token_hex(4)          # 8 characters of [0-9a-f], a valid W&B id
            atomic_write_text(id_file, json.dumps({"id": run_id, "project": project}))
        # console="off": W&B would otherwise wrap stdout/stderr (the progress display prints there)
        try:
            self.run = wandb.init(project=project, name=Path(run_dir).resolve().name, id=run_id,
                                  resume="allow", dir=str(run_dir), mode=mode, config=config,
                                  settings=wandb.Settings(console="off"))
        except wandb.errors.Error as e:      # online without a login or a network, a bad project
            raise ConfigError(f"config field 'train.wandb_mode': W&B could not start the {mode} run "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                              "train.wandb_mode=offline needs no network or login") from None

    def log(self, row: dict) -> None:
        self.run.log(scalars(row), step=row["step"])

    def samples(self, step: int, texts: list[str]) -> None:
        table = self.wandb.Table(columns=["sample", "text"], data=[[i + 1, t] for i, t in enumerate(texts)])
        self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """Rank 0's sinks. The run folder sink works from construction; the trackers of
    ``train.log_to`` are opened by :meth:`start` (when the loop starts) and closed by :meth:`close`.
    Other ranks get ``enabled=False``: nothing is written."""

    def __init__(self, folder: RunFolder, cfg, enabled: bool = True):
        self.folder, self.cfg, self.enabled = folder, cfg, enabled
        self.sinks: list[MetricSink] = [RunFolderSink(folder)] if enabled else []
        if enabled:
            check_trackers(cfg.train.log_to)

    def start(self, step: int, resumed: bool) -> None:
        if not self.enabled or len(self.sinks) > 1:
            return
        if not resumed:   # a new run in a reused folder: no samples of the old one (as metrics.jsonl)
            for old in (self.folder.path / SAMPLES_DIR).glob("step_*.txt"):
                old.unlink()
        tc = self.cfg.train
        for name in tc.log_to:
            if name == "tensorboard":
                self.sinks.append(TensorBoardSink(self.folder.path, step))
            elif name == "wandb":
                self.sinks.append(WandbSink(self.folder.path, self.cfg.to_dict(), tc.wandb_project,
                                            tc.wandb_mode, resumed))

    def log(self, row: dict) -> None:
        for sink in self.sinks:
            sink.log(row)

    def samples(self, step: int, texts: list[str]) -> None:
        for sink in self.sinks:
            sink.samples(step, texts)

    def close(self) -> None:
        sinks, self.sinks = self.sinks[1:], self.sinks[:1]
        for sink in sinks:
            sink.close()
