"""Progress bars for long work (rich): counts, rate, elapsed and ETA."""

from __future__ import annotations

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


def bar(description: str, total: int, unit: str = "it") -> Progress:
    """A started-on-enter progress bar; use ``with bar(...) as p: task = p.tasks[0].id``."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    progress.add_task(description, total=total, rate=f"0.0 {unit}/s")
    return progress


def advance(progress: Progress, n: int, rate_value: float, unit: str) -> None:
    task = progress.tasks[0]
    progress.update(task.id, advance=n, rate=f"{rate_value:.1f} {unit}/s")
