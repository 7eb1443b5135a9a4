"""Scheduled deletion runs: the deletion flow served with a cron or interval schedule on a real Prefect API.

Prefect's ephemeral API (what a plain flow call starts) does not fire schedules, so when no
``PREFECT_API_URL`` is configured, :func:`local_server` starts ``prefect server start`` on 127.0.0.1 with its
sqlite database in the workspace's Prefect home. Each scheduled run batches every pending request; the
runner starts at most one run at a time, and the workspace lock keeps any other run off the workspace.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from unlearnops.workspace import Workspace


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def local_server(ws: Workspace, port: int | None = None, timeout: float = 180.0) -> Iterator[str]:
    """Run a Prefect server (sqlite in the workspace) on 127.0.0.1 for the duration of the block; yields
    its API URL. The server is stopped on exit."""
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(ws.prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "true"}
    env.pop("PREFECT_API_URL", None)
    ws.prefect_home.mkdir(parents=True, exist_ok=True)
    log = ws.prefect_home / "server.log"
    prefect = Path(sys.executable).parent / "prefect"
    with open(log, "ab") as out:
        server = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(api_url):
            if server.poll() is not None:
                raise RuntimeError(f"the Prefect server exited ({server.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f} s; see {log}")
            time.sleep(1)
        yield api_url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def serve(ws: Workspace, cron: str | None = None, interval: float | None = None) -> None:
    """Serve the deletion flow for ``ws`` on a schedule until interrupted (uses ``PREFECT_API_URL``)."""
    from prefect.deployments.runner import EntrypointType

    from unlearnops.pipelines.deletion import deletion_flow

    deletion_flow.serve(
        name=f"deletion-{ws.settings.project.model_name}",
        cron=cron,
        interval=interval,
        parameters={"workspace": str(ws.root)},
        limit=1,
        entrypoint_type=EntrypointType.MODULE_PATH,
        print_starting_message=False,
    )
