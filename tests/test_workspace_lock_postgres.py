"""The workspace lock on a real PostgreSQL server (a throwaway cluster on 127.0.0.1, stopped after): with
``UNLEARNOPS_LOCK_DATABASE_URL`` set, a second holder is refused by the database's advisory lock, even with
the file lock out of the way (another machine has its own ``flow.lock``), and a holder killed by SIGKILL
frees the workspace at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from unlearnops import servers
from unlearnops.durable import LOCK_DATABASE_ENV, WorkspaceBusy, database_lock, workspace_lock

HOLDER = """
import sys, time
from unlearnops.durable import workspace_lock
with workspace_lock(sys.argv[1], purpose="deletion run"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    cluster = servers.postgres_server(tmp_path_factory.mktemp("pg"))
    try:
        with servers.running(cluster.server, timeout=120):
            yield cluster
    finally:
        cluster.remove()
    assert cluster.server.process.poll() is not None and not servers._group_alive(cluster.server.process.pid)


def test_the_advisory_lock_serializes_holders_and_is_freed_by_a_kill(postgres, tmp_path, monkeypatch):
    url = postgres.dsn()
    state = tmp_path / "ws" / ".unlearnops"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, LOCK_DATABASE_ENV: url})
    try:
        assert holder.stdout.readline().strip() == "held"
        # The database refuses a second holder, naming the first (its pid), without touching the file lock.
        with pytest.raises(WorkspaceBusy, match=rf"deletion run pid {holder.pid}.*advisory lock"):
            with database_lock(url, state, wait=0.5):
                pass
        monkeypatch.setenv(LOCK_DATABASE_ENV, url)
        with pytest.raises(WorkspaceBusy, match="advisory lock"):
            with workspace_lock(state, wait=0):
                pass
        # Another workspace is not blocked.
        with workspace_lock(tmp_path / "other" / ".unlearnops"):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        started = time.monotonic()
        with workspace_lock(state, wait=10):
            freed = time.monotonic() - started
        assert freed < 5, f"the advisory lock outlived its killed holder by {freed:.1f} s"
    finally:
        holder.kill()
        holder.wait(10)
