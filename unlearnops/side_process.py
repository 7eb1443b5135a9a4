"""A second Python process for import-bound, pure work of one command (the data gate's Great Expectations
validation, the report's plots): it imports what that work needs while this process does something else,
on the core this process does not use. Only ``unlearnops run`` starts one (:func:`started`); everywhere else,
and whenever the process is gone, the work runs in the calling process as before."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

_log = logging.getLogger(__name__)
T = TypeVar("T")

#: What the side process imports before it answers: Great Expectations (2-4 s) for the data gate,
#: matplotlib's Agg backend and pyplot (0.6 s) for the report.
PRELOAD = ("great_expectations", "great_expectations.expectations", "matplotlib.pyplot")

_current: "_SideProcess | None" = None  # while started() is active


@contextmanager
def started(preload: tuple[str, ...] = PRELOAD) -> Iterator[None]:
    """While active, :func:`run` sends its work to a side process that starts now and imports ``preload``.
    Nested: the outer one serves."""
    global _current
    if _current is not None:
        yield
        return
    _current = _SideProcess(preload)
    try:
        yield
    finally:
        process, _current = _current, None
        process.close()


def run(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in the side process when one is started (``function`` and the arguments are
    pickled: module-level functions, plain data), else here. A side process that died is reported and the
    work runs here; an exception of ``function`` itself is raised as it would be here."""
    process = _current
    if process is not None:
        try:
            return process.call(function, *args)
        except ConnectionError as exc:
            _log.warning("%s: running %s in this process", exc, getattr(function, "__name__", function))
    return function(*args)


class _SideProcess:
    """One Python process that imports ``preload``, then runs the functions it is sent, one at a time
    (pickled over a socket pair; both ends are this package's code). Started as ``python -c``, not through
    multiprocessing's spawn, so the caller's ``__main__`` is never run again there."""

    def __init__(self, preload: tuple[str, ...]):
        import os
        import subprocess
        import sys
        import threading
        from multiprocessing import Pipe

        self.connection, child_end = Pipe(duplex=True)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from multiprocessing.connection import Connection; "
             "from unlearnops.side_process import serve; serve(Connection(int(sys.argv[1])), sys.argv[2:])",
             str(child_end.fileno()), *preload],
            pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # this process's stdout may be --json's
            env={**os.environ, "MPLBACKEND": "Agg"})  # the report draws with Agg: no display is looked for
        child_end.close()
        self.lock = threading.Lock()

    def call(self, function, *args):
        """``function(*args)`` there; :class:`ConnectionError` when the process is gone."""
        with self.lock:
            try:
                self.connection.send((function, args))
                succeeded, value = self.connection.recv()
            except (EOFError, OSError) as exc:
                raise ConnectionError(f"the side process ended ({exc!r})") from exc
        if succeeded:
            return value
        raise value

    def close(self) -> None:
        """Stop the process, also in the middle of its imports (nothing it holds needs to be kept)."""
        import subprocess

        self.connection.close()
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def serve(connection, preload: list[str]) -> None:
    """The side process's loop: import ``preload``, then answer ``(function, args)`` with ``(True, result)``
    or ``(False, exception)`` until the other end closes."""
    import importlib

    for module in preload:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the work that needs it raises the same error, sent back then
            pass
    while True:
        try:
            function, args = connection.recv()
        except (EOFError, OSError):
            return
        try:
            answer = (True, function(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
            answer = (False, exc)
        try:
            connection.send(answer)
        except (OSError, ValueError):  # the caller is gone
            return
