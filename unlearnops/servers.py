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
from typing import Callable, Iterator

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
    #: Readiness for servers that do not speak HTTP (PostgreSQL); default: ``health_url`` answers 200.
    probe: Callable[[], bool] | None = None

    def ready(self) -> bool:
        return self.probe() if self.probe else answers(self.health_url)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait_ready(self, deadline: float) -> None:
        while not self.ready():
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


def prefect_server(home: Path, port: int | None = None, database_url: str | None = None) -> LocalServer:
    """``prefect server start`` on 127.0.0.1 with its sqlite database under ``home`` (its PREFECT_HOME), or
    on ``database_url`` (``postgresql+asyncpg://…``: PREFECT_API_DATABASE_CONNECTION_URL)."""
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(QUIET_ENV, PREFECT_HOME=str(home))
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    return LocalServer("Prefect", [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                       url=api_url, health_url=f"{api_url}/health", log=home / "server.log", env=env)


def mlflow_server(root: Path, port: int | None = None, backend_store_uri: str | None = None,
                  artifacts_destination: str | None = None, env: dict[str, str] | None = None) -> LocalServer:
    """``mlflow server`` on 127.0.0.1: backend store ``root/mlflow.db`` (sqlite) or ``backend_store_uri``
    (e.g. ``postgresql+psycopg://…``), artifacts proxied by the server (``--serve-artifacts``) and stored under
    ``root/artifacts`` or at ``artifacts_destination`` (e.g. ``s3://bucket/mlflow``, with
    ``MLFLOW_S3_ENDPOINT_URL`` and the keys in ``env``). Clients use its ``url`` as tracking URI
    (``UNLEARNOPS_TRACKING_URI``); they never see the stores."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    command = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
               "--serve-artifacts", "--artifacts-destination", artifacts_destination or str(root / "artifacts")]
    full_env = {**os.environ, **(env or {}), **QUIET_ENV}
    return LocalServer("MLflow", command, url=url, health_url=f"{url}/health", log=root / "server.log", env=full_env)


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


#: What Prefect 3.8's ``SubprocessASGIServer`` (``prefect/server/api/server.py``) sets for its temporary server.
PREFECT_TEMPORARY_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
#: The start of the error Prefect raises when its temporary server did not answer in time (kept word for word:
#: :func:`unlearnops.cli.orchestration_errors` turns it into one line and exit 2, whichever server raised it).
PREFECT_START_FAILED = "Timed out while attempting to connect to ephemeral Prefect API server"
_FALSE = ("0", "false", "f", "no", "n", "off")


def temporary_prefect_wanted(cwd: Path | None = None) -> bool:
    """True when Prefect would start its temporary server for this process: no ``PREFECT_API_URL``, ephemeral
    mode not switched off, and nothing that could name a server (a profile, ``prefect.toml``, ``.env`` or
    ``[tool.prefect]`` in the working directory). Decided from the environment and files alone, without
    importing Prefect; when in doubt False (Prefect then decides as always). Also False once Prefect is
    imported in this process: its settings are read then, and a later ``PREFECT_API_URL`` would not count."""
    if "prefect" in sys.modules:
        return False
    env = os.environ
    if env.get("PREFECT_API_URL") or env.get("PREFECT_PROFILE") or env.get("PREFECT_PROFILES_PATH"):
        return False
    if any(env.get(key, "").strip().lower() in _FALSE
           for key in ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")):
        return False
    home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    cwd = Path.cwd() if cwd is None else Path(cwd)
    if (home / "profiles.toml").exists() or (cwd / "prefect.toml").exists():
        return False
    for name, marker in ((".env", "PREFECT_"), ("pyproject.toml", "tool.prefect")):
        try:
            if marker in (cwd / name).read_text(errors="replace"):
                return False
        except OSError:
            pass
    return True


class TemporaryPrefectServer:
    """Prefect's temporary API server, started by the command ahead of the flow instead of by Prefect's client
    when the flow begins: the same process ``SubprocessASGIServer`` starts (uvicorn on Prefect's
    ``create_app``, UI off, ephemeral settings, this process's environment and its ``PREFECT_HOME``), on a
    free 127.0.0.1 port. It boots in its own process while this one goes on (importing, validating); the
    command then points ``PREFECT_API_URL`` at it, so the process neither imports Prefect's server package
    nor starts a second server. :meth:`wait_ready` keeps Prefect's start-up budget and its error."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> subprocess.Popen:
        import importlib.util

        app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent  # no import of prefect
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
                   "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                   "--log-level", "error", "--lifespan", "on"]
        return subprocess.Popen(command, env={**os.environ, **PREFECT_TEMPORARY_ENV})

    def start(self) -> None:
        """Spawn the server; it is stopped at exit (registered now, as Prefect does, so the handlers Prefect's
        log and event workers register later still deliver to it before it stops)."""
        import atexit

        self.port = free_port()
        self.process = self._spawn()
        atexit.register(self.stop)

    def wait_ready(self, timeout: float, meanwhile=()) -> None:
        """Wait until the server answers its health check, as Prefect does (``timeout`` counts the 0.1 s
        pauses between checks; an exit code 3, port taken, restarts it on another port); each of the
        ``meanwhile`` callables runs in place of a pause while the server is not up yet. ``RuntimeError``
        with Prefect's message when it did not answer."""
        pending = list(meanwhile)
        elapsed = 0.0
        while elapsed < timeout:
            if self.process.poll() == 3:
                self.port = free_port()
                self.process = self._spawn()
                continue
            if answers(f"{self.api_url}/health", timeout=5.0):
                return
            if pending:
                pending.pop(0)()
                continue
            time.sleep(0.1)
            elapsed += 0.1
        message = f"{PREFECT_START_FAILED}."
        if self.process.poll() is not None:
            message += f" Ephemeral server process exited with code {self.process.returncode}."
        raise RuntimeError(message)

    def stop(self) -> None:
        """Terminate the server (kill it after 5 s), as Prefect stops its temporary server at exit."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            self.process = None


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


# -- PostgreSQL and an S3-compatible object store (the scale path's stores) --------------------------------


def postgres_bin(name: str) -> str:
    """A PostgreSQL server binary (``initdb``, ``postgres``): on PATH, else Debian's versioned directory."""
    import glob
    import shutil

    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)")
    return found


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL cluster: its own data directory, a password-protected superuser, listening on
    127.0.0.1 only (unix socket in its own directory). ``server`` is the postmaster as a :class:`LocalServer`."""

    server: LocalServer
    port: int
    user: str
    password: str
    directory: Path

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        """A SQLAlchemy URL: ``driver`` ``psycopg`` (MLflow, the workspace lock) or ``asyncpg`` (Prefect)."""
        from urllib.parse import quote

        return f"postgresql+{driver}://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string (what ``psycopg.connect`` and ``UNLEARNOPS_LOCK_DATABASE_URL`` take)."""
        return self.url(database).replace("postgresql+psycopg://", "postgresql://")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def remove(self) -> None:
        """Delete the data directory (after the server stopped)."""
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


def _as_unprivileged(user: str) -> list[str]:
    """The command prefix that runs a program as ``user`` when this process is root (PostgreSQL refuses to run
    as root); empty otherwise. ``setpriv`` execs in place, so the server stays the process-group leader."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]


def postgres_server(log_dir: Path, port: int | None = None) -> PostgresCluster:
    """``initdb`` a fresh cluster into a new temporary directory (owned by the ``postgres`` user, else
    ``nobody``, when running as root) and describe its postmaster on a free 127.0.0.1 port; durability is
    traded for speed (``fsync=off``): the cluster is for tests and local stacks, and deleted after."""
    import pwd
    import secrets
    import tempfile

    port = port or free_port()
    user = "postgres"
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        run_as = account.pw_name
    directory = Path(tempfile.mkdtemp(prefix="unlearnops-pg-"))  # /tmp: traversable, unlike pytest's 0700 dirs
    data, sockets, pwfile = directory / "data", directory / "sockets", directory / "pwfile"
    sockets.mkdir()
    password = secrets.token_urlsafe(18)
    pwfile.write_text(password)
    prefix = []
    if os.geteuid() == 0:
        for path in (directory, sockets, pwfile):
            os.chown(path, account.pw_uid, account.pw_gid)
        prefix = _as_unprivileged(run_as)
    env = {**os.environ, "LC_ALL": "C", "HOME": str(directory)}
    subprocess.run(prefix + [postgres_bin("initdb"), "-D", str(data), "-U", user, "--pwfile", str(pwfile),
                             "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"],
                   env=env, check=True, capture_output=True, text=True)
    pwfile.unlink()
    command = prefix + [postgres_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
                        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off", "-c", "max_connections=200"]
    cluster = PostgresCluster(None, port, user, password, directory)  # type: ignore[arg-type]

    def accepts() -> bool:
        import psycopg

        try:
            with psycopg.connect(cluster.dsn(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    cluster.server = LocalServer("PostgreSQL", command, url=cluster.dsn(), health_url=f"postgresql://127.0.0.1:{port}",
                                 log=Path(log_dir) / "postgres.log", env=env, probe=accepts)
    return cluster


def s3_server(log_dir: Path, port: int | None = None) -> LocalServer:
    """moto's S3-compatible HTTP server (``moto_server``) on 127.0.0.1: buckets and objects over the S3 REST
    API, in memory for the life of the process. Clients use its ``url`` as endpoint (``MLFLOW_S3_ENDPOINT_URL``,
    DVC's ``endpointurl``) with any key pair (:data:`S3_TEST_CREDENTIALS`)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    return LocalServer("S3 (moto)", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], url=url,
                       health_url=f"{url}/moto-api/", log=Path(log_dir) / "s3.log", env={**os.environ, **QUIET_ENV})


#: The key pair the local object store accepts (moto checks none); real deployments take theirs from a secret.
S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "unlearnops-local", "AWS_SECRET_ACCESS_KEY": "unlearnops-local",
                       "AWS_DEFAULT_REGION": "us-east-1"}


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                 region_name=S3_TEST_CREDENTIALS["AWS_DEFAULT_REGION"]).create_bucket(Bucket=bucket)
