"""Progress of long loops (training epochs): a rich progress bar on a terminal, one plain line per step
otherwise (logs, CI, DVC's captured output), so long work is never silent."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

EpochReport = Callable[[int, float], None]


@contextmanager
def epoch_progress(total: int, label: str = "train", console=None) -> Iterator[EpochReport]:
    """Yield ``report(epoch, loss)``: a bar with epochs, loss, elapsed and remaining time when stderr is a
    terminal (or ``console`` is given), else a line ``<label>: epoch k/N loss L`` on stderr per epoch."""
    if console is None and not sys.stderr.isatty():
        def report(epoch: int, loss: float) -> None:
            print(f"{label}: epoch {epoch}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

        yield report
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True)) as progress:
        task = progress.add_task(label, total=total, loss="-")

        def report(epoch: int, loss: float) -> None:
            progress.update(task, completed=epoch, loss=f"{loss:.4f}")

        yield report
