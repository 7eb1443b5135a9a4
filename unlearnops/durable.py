"""Crash-safe building blocks: atomic file writes and the workspace lock that lets one deletion run at a
time touch a workspace.

The lock is a ``flock`` on a file of the workspace; with ``UNLEARNOPS_LOCK_DATABASE_URL`` set (a
``postgresql://`` URL, the scale path's database server) it is also a PostgreSQL session advisory lock keyed
by the workspace, taken first, so runs on several machines (Prefect workers sharing the workspace volume) are
serialized by the database server, not by a file lock that network filesystems may not honour."""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = "flow.lock"
#: A ``postgresql://`` URL: when set, the workspace lock is also an advisory lock on that server.
LOCK_DATABASE_ENV = "UNLEARNOPS_LOCK_DATABASE_URL"
#: The first half of every advisory lock key the project takes (the second is the workspace's).
ADVISORY_LOCK_CLASS = 0x554E4C  # "UNL"


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


def advisory_key(state_dir: Path) -> int:
    """The second half of the workspace's advisory lock key: 31 bits of a hash of its resolved state directory
    (machines that share a workspace mount it at the same path, as the deploy/ manifests do)."""
    digest = hashlib.blake2b(str(Path(state_dir).resolve()).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


@contextmanager
def database_lock(url: str, state_dir: Path, wait: float = 0.0, purpose: str = "deletion run") -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock of the workspace for the block, on a connection of its own.

    The server drops it when the connection ends, so a holder killed by ``kill -9`` (its socket closed by
    the kernel) frees the workspace at once, like the file lock. Waits up to ``wait`` seconds, then raises
    :class:`WorkspaceBusy` naming the holder (its ``application_name``)."""
    import psycopg

    key = advisory_key(state_dir)
    conn = psycopg.connect(url, autocommit=True, connect_timeout=10,
                           application_name=f"unlearnops {purpose} pid {os.getpid()}"[:63])
    deadline = time.monotonic() + wait
    try:
        while not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (ADVISORY_LOCK_CLASS, key)).fetchone()[0]:
            if time.monotonic() >= deadline:
                row = conn.execute(
                    "SELECT a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::int::oid "
                    "AND l.objid = %s::int::oid AND l.objsubid = 2", (ADVISORY_LOCK_CLASS, key)).fetchone()
                holder = f"{row[0]} ({row[1] or 'local'})" if row else "another process"
                raise WorkspaceBusy(f"the workspace is busy: {holder} holds its advisory lock {ADVISORY_LOCK_CLASS}/"
                                    f"{key} on the database server")
            time.sleep(0.2)
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (ADVISORY_LOCK_CLASS, key))
    finally:
        conn.close()


@contextmanager
def workspace_lock(state_dir: Path, wait: float = 0.0, purpose: str = "deletion run") -> Iterator[None]:
    """Hold the workspace lock for the block: the database's advisory lock first when
    ``UNLEARNOPS_LOCK_DATABASE_URL`` is set (:func:`database_lock`), then the file lock. Waits up to ``wait``
    seconds for each, then raises :class:`WorkspaceBusy` naming the holder."""
    url = os.environ.get(LOCK_DATABASE_ENV)
    if not url:
        with file_lock(state_dir, wait, purpose):
            yield
        return
    started = time.monotonic()
    with database_lock(url, state_dir, wait, purpose):
        with file_lock(state_dir, max(0.0, wait - (time.monotonic() - started)), purpose):
            yield


@contextmanager
def file_lock(state_dir: Path, wait: float = 0.0, purpose: str = "deletion run") -> Iterator[None]:
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
