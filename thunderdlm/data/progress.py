"""The progress bar of ``thunderdlm data prepare``: its stage (read, fit, tokenize) and, while
tokenizing, the characters done — on a terminal only.

Without a terminal (CI, pipes, log files) or with ``--quiet`` it draws nothing — the command's
one summary line is the log. The bar is transient: it disappears when preparation ends.
"""
from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn


class TokenizeProgress:
    """``with TokenizeProgress(enabled) as bar: prepare_data(..., progress=bar.update)``."""

    def __init__(self, enabled: bool = True, console: Console | None = None):
        console = console or Console(stderr=True)
        self.progress = None
        if enabled and console.is_terminal:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                                     TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                     console=console, transient=True, refresh_per_second=4)
            self.task = self.progress.add_task("prepare", total=None, detail="")

    def update(self, stage: str, done: int, total: int) -> None:
        """``total`` 0: a stage of unknown length (a pulsing bar)."""
        if self.progress is not None:
            detail = f"{done:,} / {total:,} chars" if total else ""
            self.progress.update(self.task, description=stage, completed=done, total=total or None,
                                 detail=detail)

    def __enter__(self) -> TokenizeProgress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.progress is not None:
            self.progress.stop()
