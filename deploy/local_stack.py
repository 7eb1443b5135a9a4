"""The scale path's stack on one machine, for a person to run: a throwaway PostgreSQL cluster (MLflow's
backend store, Prefect's database, the workspace advisory lock), moto's S3-compatible server (MLflow's
artifacts, the DVC remote), ``mlflow server``, ``prefect server start`` and two ``prefect worker`` processes
on work pool ``gpu``, all on 127.0.0.1 — the same helpers the scale-path tests use
(:mod:`unlearnops.servers`). It prints the environment to export and runs until Ctrl-C, then stops
everything and deletes the cluster and the bucket's contents (moto keeps them in memory).

    python -m unlearnops.deploy.local_stack [--dir DIR] [--workers 2] [--pool gpu]

moto is a development dependency (``pip install -e '.[dev]'``); production uses PostgreSQL and an object
store run as services (``deploy/README.md``).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import tempfile
import time
from pathlib import Path

from unlearnops import servers
from unlearnops.durable import LOCK_DATABASE_ENV

BUCKET = "unlearnops"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="logs and server homes [default: a temp dir]")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", default="gpu")
    args = parser.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="unlearnops-stack-"))
    postgres, s3 = servers.postgres_server(root / "postgres"), servers.s3_server(root / "s3")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with servers.running(postgres.server, s3, timeout=120):
            for database in ("mlflow", "prefect", "unlearnops"):
                postgres.create_database(database)
            servers.create_bucket(s3.url, BUCKET)
            mlflow = servers.mlflow_server(root / "mlflow", backend_store_uri=postgres.url("mlflow"),
                                           artifacts_destination=f"s3://{BUCKET}/mlflow",
                                           env={**servers.S3_TEST_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3.url})
            prefect = servers.prefect_server(root / "prefect", database_url=postgres.url("prefect", driver="asyncpg"))
            with servers.running(mlflow, prefect, timeout=600) as (tracking_uri, api_url):
                env = {"UNLEARNOPS_TRACKING_URI": tracking_uri, "PREFECT_API_URL": api_url,
                       LOCK_DATABASE_ENV: postgres.dsn("unlearnops"), "UNLEARNOPS_DVC_ENDPOINT_URL": s3.url,
                       "UNLEARNOPS_DVC_REMOTE_URL": f"s3://{BUCKET}/dvc", **servers.S3_TEST_CREDENTIALS}
                import httpx

                httpx.post(f"{api_url}/work_pools/", json={"name": args.pool, "type": "process"}, timeout=30)
                workers = [servers.prefect_worker(args.pool, api_url, root / f"worker-{n}.log", env=env)
                           for n in range(1, args.workers + 1)]
                with servers.running(*workers, timeout=300):
                    print("# the stack is up; in another shell:")
                    for key, value in env.items():
                        print(f"export {key}={shlex.quote(value)}")
                    print(f"# logs under {root}; Ctrl-C stops everything", flush=True)
                    while True:
                        time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        postgres.remove()


if __name__ == "__main__":
    main()
