"""Progress for long work: a rich bar on a terminal, periodic log lines elsewhere (CI, files).

Both show done/total, the rate, elapsed time and an ETA::

    with bar("generate", total=160, unit="tok") as p:
        ...
        advance(p, n_done_now, rate_value, "tok")
"""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)

LOG_EVERY_S = 20.0


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LogProgress:
    """Plain-text progress for non-terminals: one line at most every LOG_EVERY_S seconds, and at the end."""

    def __init__(self, description: str, total: int, unit: str):
        self.description, self.total, self.unit = description, total, unit
        self.done, self.rate = 0, 0.0
        self.start = self.last = time.perf_counter()
        self.lock = threading.Lock()  # samplers side by side advance one bar from two threads

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.done < self.total and exc[0] is None:
            self.line()

    def advance(self, n: int, rate: float) -> None:
        with self.lock:
            self.done += n
            self.rate = rate
            now = time.perf_counter()
            if now - self.last >= LOG_EVERY_S or self.done >= self.total:
                self.last = now
                self.line()

    def line(self) -> None:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        console.print(f"{self.description}: {self.done}/{self.total} ({self.done / max(self.total, 1):.0%}) "
                      f"{self.rate:.1f} {self.unit}/s elapsed {_clock(elapsed)} eta {_clock(eta)}",
                      highlight=False)


def bar(description: str, total: int, unit: str = "it") -> Progress | LogProgress:
    """A progress display for ``total`` items, used as a context manager with ``advance``."""
    if not console.is_terminal:
        return LogProgress(description, total, unit)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )
    progress.add_task(description, total=total, rate=f"0.0 {unit}/s")
    return progress


def advance(progress: Progress | LogProgress, n: int, rate_value: float, unit: str) -> None:
    if isinstance(progress, LogProgress):
        progress.advance(n, rate_value)
        return
    task = progress.tasks[0]
    progress.update(task.id, advance=n, rate=f"{rate_value:.1f} {unit}/s")
