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


class ModelReport:
    """What :func:`model_progress` hands a training loop: ``epoch(epoch, loss)`` per epoch, ``done(meta)``
    once the model is saved."""

    def __init__(self, epoch: EpochReport, done: Callable[[dict], None]):
        self.epoch, self.done = epoch, done


def model_progress(label: str = "references", epochs: int = 1, console=None):
    """A reporter for a series of models (reference models): ``with reporter(n, total, index) as r`` yields
    a :class:`ModelReport`. On a terminal (or with ``console``) each model gets a rich bar over its epochs;
    elsewhere one line per model once it is trained: ``<label>: reference model n/total (index i) trained on
    S samples in T s``."""
    tty = console is not None or sys.stderr.isatty()

    @contextmanager
    def reporter(n: int, total: int, index: int) -> Iterator[ModelReport]:
        def line(meta: dict) -> None:
            print(f"{label}: reference model {n}/{total} (index {index}) trained on {meta.get('n_train')} samples "
                  f"in {meta.get('seconds')} s", file=sys.stderr, flush=True)

        if not tty:
            yield ModelReport(lambda epoch, loss: None, line)
            return
        with epoch_progress(epochs, f"{label} {n}/{total} (index {index})", console=console) as report:
            yield ModelReport(report, lambda meta: None)

    return reporter
