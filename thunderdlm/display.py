"""Terminal display: the training progress bar and the live "crystallising" view of a sample.

On a terminal, ``rich`` draws a live bar (step, loss, tokens/s, ETA) and a panel where masked
positions turn into text step by step. Without a terminal (CI, pipes, log files) the same
information is printed as plain lines at a bounded rate, so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text


def _fmt_seconds(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 60:d}:{s % 60:02d}"


class TrainDisplay:
    """Progress of a training run, by budget fraction (steps or minutes, whichever binds)."""

    def __init__(self, train_cfg, enabled: bool = True, console: Console | None = None):
        self.cfg = train_cfg
        self.enabled = enabled
        self.console = console or Console(stderr=False)
        self.tty = enabled and self.console.is_terminal
        self.progress: Progress | None = None
        self.last_print = 0.0

    def start(self, step: int, fraction: float) -> None:
        if not self.tty:
            return
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("step {task.fields[step]}"), TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tok_s]} tok/s"), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False, refresh_per_second=4)
        self.task = self.progress.add_task("train", total=1000, completed=int(1000 * fraction),
                                           step=step, loss="-", tok_s="-")
        self.progress.start()

    def update(self, step: int, loss: float, tok_s: float, fraction: float, seconds: float) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.update(self.task, completed=int(1000 * min(fraction, 1.0)), step=step,
                                 loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
            return
        now = time.monotonic()
        if now - self.last_print >= 10.0 or fraction >= 1.0:
            eta = seconds * (1.0 - fraction) / max(fraction, 1e-9)
            print(f"step {step} | loss {loss:.4f} | {tok_s:,.0f} tok/s | {100 * fraction:5.1f}% "
                  f"| elapsed {_fmt_seconds(seconds)} | ETA {_fmt_seconds(eta)}", flush=True)
            self.last_print = now

    def note(self, message: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(message)
        else:
            print(message, flush=True)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def render_tokens(ids, decode_one: Callable[[int], str], noise_id: int | None, noise_char: str = "▒") -> Text:
    """Text with not-yet-decided positions drawn as ``noise_char`` (dim)."""
    text = Text()
    for i in ids:
        if noise_id is not None and i == noise_id:
            text.append(noise_char, style="dim")
        else:
            text.append(decode_one(int(i)))
    return text


class Crystallizer:
    """Per-step callback that shows one sample condensing out of the noise."""

    def __init__(self, decode_one: Callable[[int], str], noise_id: int | None, row: int = 0,
                 console: Console | None = None, min_interval: float = 0.05):
        self.decode_one, self.noise_id, self.row = decode_one, noise_id, row
        self.console = console or Console()
        self.live: Live | None = None
        self.min_interval = min_interval
        self.last = 0.0
        self.plain_marks: set[int] = set()

    def __enter__(self):
        if self.console.is_terminal:
            self.live = Live(Text(""), console=self.console, refresh_per_second=20, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()

    def __call__(self, info) -> None:
        ids = info.x[self.row].tolist()
        body = render_tokens(ids, self.decode_one, self.noise_id)
        title = f"step {info.step}/{info.total}"
        if self.live is not None:
            now = time.monotonic()
            if now - self.last >= self.min_interval or info.step == info.total:
                self.live.update(Panel(body, title=title, border_style="cyan"))
                self.last = now
            return
        # no terminal: print a few snapshots (25 %, 50 %, 75 %, 100 %) so logs show the process
        marks = {max(1, round(info.total * k / 4)) for k in range(1, 5)}
        if info.step in marks and info.step not in self.plain_marks:
            self.plain_marks.add(info.step)
            print(f"--- {title} ---\n{body.plain}", file=sys.stdout, flush=True)
