"""Crash-safe building blocks: atomic file writes and the workspace lock that lets one deletion run at a
time touch a workspace."""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = "flow.lock"


class WorkspaceBusy(RuntimeError):
    """Another process holds the workspace lock (a deletion run or a purge is in progress)."""


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temporary sibling, fsync it, and rename it over ``path``: readers see the old
    file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def workspace_lock(state_dir: Path, wait: float = 0.0, purpose: str = "deletion run") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<state_dir>/flow.lock`` for the duration of the block.

    The kernel drops the lock when the holder dies, even by ``kill -9``, so a crash never leaves the
    workspace locked. Waits up to ``wait`` seconds, then raises :class:`WorkspaceBusy` naming the holder.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text().strip() or "another process"
                    raise WorkspaceBusy(f"the workspace is busy: {holder} holds {path}") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{purpose} pid {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks (no torch, for fast verification)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
