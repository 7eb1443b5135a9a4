"""Real MLflow and Prefect servers on 127.0.0.1, as subprocesses: for ``unlearnops schedule`` (which needs a
Prefect server for schedules to fire) and for the integration tests of the scale path.

A server runs in its own process group, is considered up when its health endpoint answers 200, and is
stopped with everything it spawned (SIGTERM, then SIGKILL) when the ``running`` block exits, also on errors.
Production deployments run the same engines as services instead (see ``deploy/README.md``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET url`` returns 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class LocalServer:
    """One server subprocess: ``url`` is what clients use, ``health_url`` what says it is ready."""

    name: str
    command: list[str]
    url: str
    health_url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait_ready(self, deadline: float) -> None:
        while not answers(self.health_url):
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.name} server exited ({self.process.returncode}); see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} server did not answer {self.health_url} in time; see {self.log}")
            time.sleep(0.5)

    def stop(self, grace: float = 20.0) -> None:
        if self.process is None or (self.process.poll() is not None and not _group_alive(self.process.pid)):
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                if not _group_alive(self.process.pid):
                    return
            except subprocess.TimeoutExpired:
                pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _bin(name: str) -> str:
    """The console script ``name`` of this interpreter's environment."""
    return str(Path(sys.executable).parent / name)


def prefect_server(home: Path, port: int | None = None) -> LocalServer:
    """``prefect server start`` on 127.0.0.1 with its sqlite database under ``home`` (its PREFECT_HOME)."""
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(QUIET_ENV, PREFECT_HOME=str(home))
    return LocalServer("Prefect", [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                       url=api_url, health_url=f"{api_url}/health", log=home / "server.log", env=env)


def mlflow_server(root: Path, port: int | None = None) -> LocalServer:
    """``mlflow server`` on 127.0.0.1: backend store ``root/mlflow.db`` (sqlite), artifacts proxied by the
    server (``--serve-artifacts``) and stored under ``root/artifacts``. Clients use its ``url`` as tracking
    URI (``UNLEARNOPS_TRACKING_URI``); they never see the artifact directory."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    command = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
    env = {**os.environ, **QUIET_ENV}
    return LocalServer("MLflow", command, url=url, health_url=f"{url}/health", log=root / "server.log", env=env)


@contextmanager
def running(*servers: LocalServer, timeout: float = 300.0) -> Iterator[tuple[str, ...]]:
    """Start ``servers`` together, wait until every one answers its health check, yield their URLs; stop
    them all on exit."""
    try:
        for server in servers:
            server.start()
        deadline = time.monotonic() + timeout
        for server in servers:
            server.wait_ready(deadline)
        yield tuple(server.url for server in servers)
    finally:
        for server in servers:
            server.stop()


def prefect_worker(pool: str, api_url: str, log: Path, env: dict[str, str] | None = None) -> LocalServer:
    """``prefect worker start --pool POOL --type process`` against ``api_url``, with its health check on a
    free loopback port (what a Kubernetes liveness probe asks in production). ``env`` reaches the flow runs
    it starts (e.g. ``UNLEARNOPS_TRACKING_URI``)."""
    port = free_port()
    full_env = {**os.environ, **(env or {}), **QUIET_ENV, "PREFECT_API_URL": api_url,
                "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1", "PREFECT_WORKER_WEBSERVER_PORT": str(port)}
    command = [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--with-healthcheck"]
    return LocalServer(f"Prefect worker ({pool})", command, url=api_url, health_url=f"http://127.0.0.1:{port}/health",
                       log=log, env=full_env)
