"""Progress of long loops (training epochs, retraining, ladder rungs, bench runs, purge): a rich progress bar
on a terminal, one plain line per step otherwise (logs, CI, DVC's captured output), so long work is never
silent. Always on stderr, so ``--json`` output is untouched. Nested loops (a retrain's epochs inside a ladder
rung) share one bar display."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

EpochReport = Callable[[int, float], None]
StepReport = Callable[[str], None]

_lock = threading.Lock()
_shown: list = []  # the rich Progress on screen, if any; nested bars add their task to it


@contextmanager
def _bar(label: str, total: int, unit: str, console) -> Iterator[Callable[..., None]]:
    """A task on the shared rich display (started here when none is on screen); yields ``update(**fields)``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with _lock:
        owner = not _shown or console is not None
        if owner:
            columns = (TextColumn("{task.description}", markup=False), BarColumn(),
                       TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
                       TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn(), TimeRemainingColumn())
            progress = Progress(*columns, console=console or Console(stderr=True))
            progress.start()
            if console is None:
                _shown.append(progress)
        else:
            progress = _shown[0]
        task = progress.add_task(label, total=total, unit=unit, info="")
    try:
        yield lambda **fields: progress.update(task, **fields)
    finally:
        with _lock:
            if owner:
                progress.stop()
                if progress in _shown:
                    _shown.remove(progress)
            else:
                progress.remove_task(task)


def _on_terminal(console) -> bool:
    return console is not None or sys.stderr.isatty()


@contextmanager
def epoch_progress(total: int, label: str = "train", console=None) -> Iterator[EpochReport]:
    """Yield ``report(epoch, loss)``: a bar with epochs, loss, elapsed and remaining time when stderr is a
    terminal (or ``console`` is given), else a line ``<label>: epoch k/N loss L`` on stderr per epoch."""
    if not _on_terminal(console):
        def report(epoch: int, loss: float) -> None:
            print(f"{label}: epoch {epoch}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

        yield report
        return
    with _bar(label, total, "epochs", console) as update:
        yield lambda epoch, loss: update(completed=epoch, info=f"loss {loss:.4f}")


@contextmanager
def step_progress(total: int, label: str, unit: str = "steps", console=None) -> Iterator[StepReport]:
    """Yield ``done(message)``, called once per finished unit of ``total`` (rungs, bench runs, purge stores):
    a bar showing the last message on a terminal (or ``console``), else a line ``<label>: k/N message``."""
    count = 0
    if not _on_terminal(console):
        def done(message: str) -> None:
            nonlocal count
            count += 1
            print(f"{label}: {count}/{total} {message}", file=sys.stderr, flush=True)

        yield done
        return
    with _bar(label, total, unit, console) as update:
        def advance(message: str) -> None:
            nonlocal count
            count += 1
            update(completed=count, info=message)

        yield advance


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
