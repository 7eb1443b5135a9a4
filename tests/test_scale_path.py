"""The scale path, for real: the same CLI flows (train → request → Prefect deletion flow → promote) against a
real ``mlflow server`` and a real ``prefect server start``, both with their databases on a throwaway
PostgreSQL cluster, MLflow's artifacts in an S3-compatible object store (moto's server), all on 127.0.0.1,
selected only by ``UNLEARNOPS_TRACKING_URI`` and ``PREFECT_API_URL`` (and ``UNLEARNOPS_LOCK_DATABASE_URL``:
the workspace lock is PostgreSQL's advisory lock). Everything must end up on the servers: versions, aliases,
tags in MLflow's database and artifacts in the bucket (nothing in the workspace's embedded registry), flow
runs Completed in Prefect (no ephemeral Prefect database). A second test runs the deletion flow the
production way: a deployment of a work pool, run by two ``prefect worker`` processes; a third runs the
bootstrap job script of ``deploy/`` (twice) with the DVC remote in the bucket. Servers are stopped
afterwards, also when an assertion fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_SUBJECTS, make_workspace
from tests.test_crash import cli, subprocess_env
from unlearnops import servers
from unlearnops.durable import LOCK_DATABASE_ENV
from unlearnops.requests import RequestStore


def api(method: str, url: str, **kwargs) -> httpx.Response:
    """An HTTP call to a server under test, retried on 503: a loaded Prefect server answers 503 while its
    database is busy, and Prefect's own client retries those the same way."""
    for attempt in range(8):
        response = httpx.request(method, url, timeout=30, **kwargs)
        if response.status_code != 503:
            return response.raise_for_status()
        time.sleep(min(2 ** attempt, 15))
    return response.raise_for_status()

RUN_ARTIFACTS = {"certificate.json", "model.onnx", "report.html", "gx_validation.json", "unlearn.json"}


def _json(result) -> dict:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-4000:]}"
    return json.loads(result.stdout)


def _last_json(stdout: str) -> dict:
    """The last JSON document of a script that ran several ``--json`` commands."""
    decoder, text, found = json.JSONDecoder(), stdout.strip(), None
    index = 0
    while index < len(text):
        start = text.find("{", index)
        if start < 0:
            break
        try:
            found, end = decoder.raw_decode(text, start)
            index = end
        except ValueError:
            index = start + 1
    assert found is not None, stdout
    return found


def _flow_run_states(api_url: str) -> Counter:
    """(flow name, state type) of every flow run the Prefect server knows, read from its REST API."""
    flows = api("POST", f"{api_url}/flows/filter", json={}).json()
    names = {f["id"]: f["name"] for f in flows}
    runs = api("POST", f"{api_url}/flow_runs/filter", json={}).json()
    return Counter((names.get(r["flow_id"]), r["state_type"]) for r in runs)


@dataclass
class Live:
    ws: object
    tracking_uri: str
    api_url: str
    env: dict[str, str]
    root: Path
    postgres: servers.PostgresCluster
    s3_url: str


BUCKET = "unlearnops-scale"


def s3_keys(endpoint: str, prefix: str = "") -> list[str]:
    """Every object key under ``prefix`` in the test bucket, read over the S3 API."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in servers.S3_TEST_CREDENTIALS.items()
                                                          if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A tiny untrained workspace; a PostgreSQL cluster and an S3 endpoint; real MLflow and Prefect servers on
    them, on loopback. Everything is checked to be gone afterwards."""
    root = tmp_path_factory.mktemp("scale")
    postgres = servers.postgres_server(root / "postgres")
    s3 = servers.s3_server(root / "s3")
    ws = make_workspace(root / "ws")  # dataset version 1 only: no registry, no orchestration yet
    # The tiny test split makes a 2-point utility bound flip on one or two samples (see test_promote_serve);
    # these tests are about where things run, so the workspace allows 6 points (a threshold from config).
    settings = ws.settings.model_copy(deep=True)
    settings.gates.utility_max_drop = 0.06
    ws.write_settings(settings, ws.params)
    try:
        with servers.running(postgres.server, s3, timeout=120):
            for database in ("mlflow", "prefect", "unlearnops"):
                postgres.create_database(database)
            servers.create_bucket(s3.url, BUCKET)
            mlflow_server = servers.mlflow_server(
                root / "mlflow-server", backend_store_uri=postgres.url("mlflow"),
                artifacts_destination=f"s3://{BUCKET}/mlflow",
                env={**servers.S3_TEST_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3.url})
            prefect_server = servers.prefect_server(root / "prefect-server",
                                                    database_url=postgres.url("prefect", driver="asyncpg"))
            with servers.running(mlflow_server, prefect_server, timeout=600) as (tracking_uri, api_url):
                env = {"UNLEARNOPS_TRACKING_URI": tracking_uri, "PREFECT_API_URL": api_url,
                       LOCK_DATABASE_ENV: postgres.dsn("unlearnops")}
                yield Live(ws, tracking_uri, api_url, env, root, postgres, s3.url)
            for server in (mlflow_server, prefect_server):  # ``servers.running`` stops them, also on failure
                assert server.process.poll() is not None, f"{server.name} still running"
                assert not servers.answers(server.health_url)
    finally:
        postgres.remove()
    for server in (postgres.server, s3):
        assert server.process.poll() is not None and not servers._group_alive(server.process.pid), server.name


def test_the_flows_run_on_real_mlflow_and_prefect_servers(live, tmp_path):
    from mlflow import MlflowClient

    from unlearnops.demo import demo_subjects

    started = time.monotonic()
    ws, env, tracking_uri, api_url = live.ws, live.env, live.tracking_uri, live.api_url
    name = ws.settings.project.model_name
    assert _json(cli(ws, "train", "--json", env=env))["champion_version"] == "1"
    subjects = demo_subjects(ws, TEST_SUBJECTS)
    receipt = _json(cli(ws, "request", "submit", "--subject", ",".join(subjects), "--reason", "scale path",
                        "--json", env=env))
    summary = _json(cli(ws, "run", "--json", env=env, timeout=600))
    assert summary["registered_version"] == "2" and summary["requests"] == [receipt["id"]]
    assert summary["certificate_status"] == "certified", summary
    check = _json(cli(ws, "promote", "--check", "--json", env=env))
    assert check["version"] == "2" and check["promotable"] and not check["promoted"]
    promoted = _json(cli(ws, "promote", "--json", env=env))
    assert promoted["promoted"] and promoted["tainted"] == ["1"]
    assert _json(cli(ws, "certificate", "verify", "2", "--json", env=env))["ok"]

    # The registry lives on the server: read it back through the server's REST API and a client.
    alias = api("GET", f"{tracking_uri}/api/2.0/mlflow/registered-models/alias",
                params={"name": name, "alias": "champion"}).json()
    assert alias["model_version"]["version"] == "2"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = {v.version: v for v in client.search_model_versions(f"name='{name}'")}
    assert set(versions) == {"1", "2"}
    assert client.get_registered_model(name).aliases == {"champion": "2"}  # candidate cleared
    v1, v2 = client.get_model_version(name, "1"), client.get_model_version(name, "2")
    assert v1.tags["unlearnops.tainted"] == "true" and v1.tags["unlearnops.kind"] == "base"
    assert v2.tags["unlearnops.parent_version"] == "1"
    assert v2.tags["unlearnops.certificate_status"] == "certified"
    assert v2.tags["unlearnops.run_id"] == summary["run_id"]

    # Artifacts went through the server's proxy into the object store, none to the workspace.
    run = client.get_run(v2.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert RUN_ARTIFACTS <= {a.path for a in client.list_artifacts(v2.run_id)}
    stored_keys = s3_keys(live.s3_url, "mlflow/")
    model_uri = client.get_model_version_download_uri(name, "2")  # the registered torch model's files
    assert model_uri.startswith("mlflow-artifacts:/"), model_uri
    model_key = "mlflow/" + model_uri.removeprefix("mlflow-artifacts:").strip("/") + "/MLmodel"
    assert model_key in stored_keys, (model_key, stored_keys[:20])
    (certificate_key,) = [k for k in stored_keys if k.endswith(f"{v2.run_id}/artifacts/certificate.json")]
    import boto3

    stored = boto3.client("s3", endpoint_url=live.s3_url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x").get_object(Bucket=BUCKET,
                                                                                       Key=certificate_key)
    downloaded = client.download_artifacts(v2.run_id, "certificate.json", str(tmp_path))
    stored = json.loads(stored["Body"].read())
    assert stored == json.loads(open(downloaded).read()) and stored["status"] == "certified"
    assert not ws.mlflow_db.exists() and not ws.mlflow_artifacts.exists()
    assert not (live.root / "mlflow-server" / "artifacts").exists() and not (live.root / "mlflow-server" / "mlflow.db").exists()
    import psycopg

    with psycopg.connect(live.postgres.dsn("mlflow")) as conn:  # the registry's rows are PostgreSQL's
        assert conn.execute("SELECT count(*) FROM model_versions WHERE name = %s", (name,)).fetchone()[0] == 2

    # The flow runs are the Prefect server's: Completed there, and no ephemeral Prefect database.
    states = _flow_run_states(api_url)
    assert states[("deletion-requests", "COMPLETED")] == 1, states
    assert states[("promote-candidate", "COMPLETED")] == 2, states
    assert sum(n for (_, state), n in states.items() if state != "COMPLETED") == 0, states
    assert not (ws.prefect_home / "prefect.db").exists() and not (live.root / "prefect-server" / "prefect.db").exists()
    import psycopg

    with psycopg.connect(live.postgres.dsn("prefect")) as conn:  # Prefect's rows are PostgreSQL's
        assert conn.execute("SELECT count(*) FROM flow_run").fetchone()[0] == sum(states.values())
    print(f"scale path: flows done and checked in {time.monotonic() - started:.0f} s")


def test_a_prefect_worker_runs_the_deletion_deployment_of_its_work_pool(live):
    """The production shape: the flow is a deployment of a work pool; a worker process (a GPU worker in
    deploy/) polls the pool and runs it; the result lands in the same registry."""
    from mlflow import MlflowClient

    from unlearnops.demo import demo_subjects

    ws, env, api_url = live.ws, live.env, live.api_url
    champion = _json(cli(ws, "train", "--json", env=env))["champion_version"]  # no-op when already trained
    api("POST", f"{api_url}/work_pools/", json={"name": "gpu", "type": "process"})
    missing = cli(ws, "schedule", "--work-pool", "no-such-pool", "--json", env=env)
    assert missing.returncode == 2 and "no work pool 'no-such-pool'" in json.loads(missing.stdout)["error"]
    deployment = _json(cli(ws, "schedule", "--work-pool", "gpu", "--cron", "0 3 * * *", "--json", env=env))
    assert deployment["work_pool"] == "gpu"
    subjects = demo_subjects(ws, TEST_SUBJECTS + 10)[TEST_SUBJECTS:]
    receipt = _json(cli(ws, "request", "submit", "--subject", ",".join(subjects), "--json", env=env))

    workers = [servers.prefect_worker("gpu", api_url, live.root / f"worker-{n}.log",
                                      env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}) for n in (1, 2)]
    logs = lambda: "\n".join(w.log.read_text()[-3000:] for w in workers if w.log.exists())  # noqa: E731
    with servers.running(*workers, timeout=300):
        # Two runs at once on two workers: the deployment's concurrency limit and the workspace's advisory
        # lock let one batch the request; the other finds nothing pending (or waits for the slot).
        runs = [api("POST", f"{api_url}/deployments/{deployment['deployment_id']}/create_flow_run", json={}).json()
                for _ in range(2)]
        deadline = time.monotonic() + 600
        while True:
            runs = [api("GET", f"{api_url}/flow_runs/{r['id']}").json() for r in runs]
            if all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
                break
            assert time.monotonic() < deadline, logs()
            time.sleep(2)
        pool_workers = {w["name"] for w in api("POST", f"{api_url}/work_pools/gpu/workers/filter", json={}).json()}
    assert len(pool_workers) == 2, pool_workers
    for flow_run in runs:
        assert flow_run["state_type"] == "COMPLETED", logs()
        assert flow_run["work_pool_name"] == "gpu" and flow_run["deployment_id"] == deployment["deployment_id"]

    done = RequestStore(ws.requests_db).get(receipt["id"])
    assert done.state in ("certified", "uncertified") and done.model_version, done
    client = MlflowClient(tracking_uri=live.tracking_uri, registry_uri=live.tracking_uri)
    version = client.get_model_version(ws.settings.project.model_name, done.model_version)
    assert version.tags["unlearnops.parent_version"] == champion
    assert version.tags["unlearnops.requests"] == receipt["id"]


def test_the_bootstrap_job_script_sets_up_a_workspace_on_the_servers(live, tmp_path):
    """deploy/docker/bootstrap-workspace.sh as the compose and Kubernetes jobs run it (the DVC remote
    in the S3 test bucket; its own MLflow server, on sqlite, since the model name is the project's key in a
    registry), run twice: the second run (a restarted job) changes nothing."""
    from mlflow import MlflowClient

    script = Path(__file__).resolve().parents[1] / "deploy" / "docker" / "bootstrap-workspace.sh"
    remote = f"s3://{BUCKET}/dvc/bootstrap"
    registry_server = servers.mlflow_server(tmp_path / "mlflow-server")
    with servers.running(registry_server, timeout=600) as (tracking_uri,):
        env = {**subprocess_env(), "PREFECT_API_URL": live.api_url, "UNLEARNOPS_TRACKING_URI": tracking_uri,
               "UNLEARNOPS_WORKSPACE": str(tmp_path / "ws"), "UNLEARNOPS_DVC_REMOTE_URL": remote,
               "UNLEARNOPS_DVC_ENDPOINT_URL": live.s3_url, **servers.S3_TEST_CREDENTIALS,
               "UNLEARNOPS_WORK_POOL": "bootstrap-pool", "UNLEARNOPS_INIT_OPTIONS": "--limit 300 --epochs 1",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        runs = [subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=900)
                for _ in range(2)]
        for run in runs:
            assert run.returncode == 0, run.stderr[-4000:]
        first, second = (_last_json(run.stdout) for run in runs)
        assert first["work_pool"] == "bootstrap-pool" and second["deployment_id"] == first["deployment_id"]

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        (version,) = client.search_model_versions("name='unlearnops-demo'")  # trained once, not twice
        assert client.get_registered_model("unlearnops-demo").aliases == {"champion": version.version}
    config = (tmp_path / "ws" / ".dvc" / "config.local").read_text()
    assert "remote = storage" in config and remote in config and live.s3_url in config
    assert s3_keys(live.s3_url, "dvc/bootstrap/files/md5/"), "dvc push left the object-storage remote empty"
    deployment = api("GET", f"{live.api_url}/deployments/{first['deployment_id']}").json()
    assert deployment["work_pool_name"] == "bootstrap-pool"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]


def _intake(ws, token: str):
    """The intake app of ``ws`` on a real uvicorn server on a free loopback port, in a thread."""
    from tests.test_intake import serve_intake

    return serve_intake(ws, token)


LOAD_REQUESTS = 50  # per workspace: 100 in all


def test_load_through_intake_on_two_workers_with_one_killed_mid_run(live, tmp_path):
    """≥ 100 deletion requests over two workspaces, submitted in waves through the HTTP intake API while two
    workers run the scheduled deletion flows of both (exact retrain ladder on a tiny model); a test loop
    promotes each certified candidate, as an operator would. One worker is SIGKILLed (with the flow run it
    runs: the process worker starts runs in sessions of their own) in the middle of a batch: the database
    drops its advisory lock, the run is marked Crashed (as Prefect's zombie automation does), which frees the
    deployment's slot, and the next scheduled run, on the other worker, resumes the batch. Every request ends forgotten
    exactly once, no model version is registered twice, and the champion is certified at every promotion."""
    import signal

    from mlflow import MlflowClient

    from unlearnops.demo import demo_subjects
    from unlearnops.flow.batch import Batch, open_batches

    env, api_url = live.env, live.api_url
    spaces = {}
    for key in ("a", "b"):
        ws = make_workspace(tmp_path / f"ws-{key}", limit=600, epochs=3)
        settings = ws.settings.model_copy(deep=True)
        settings.project.model_name = f"load-{key}"  # one registry, two projects
        settings.unlearn.ladder, settings.unlearn.ladders = ["retrain"], {}
        settings.gates.utility_max_drop = 0.5  # about where runs go and how often, not about accuracy
        ws.write_settings(settings, ws.params)
        assert _json(cli(ws, "train", "--json", env=env))["champion_version"] == "1"
        spaces[key] = ws
    api("POST", f"{api_url}/work_pools/", json={"name": "load", "type": "process"})
    deployments = {key: _json(cli(ws, "schedule", "--work-pool", "load", "--interval", "10", "--json", env=env))
                   for key, ws in spaces.items()}
    workers = [servers.prefect_worker("load", api_url, live.root / f"load-worker-{n}.log",
                                      env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}) for n in (1, 2)]
    logs = lambda: "\n".join(w.log.read_text()[-2500:] for w in workers if w.log.exists())  # noqa: E731
    token = "load-test-token-0123456789abcdef"
    intakes = {key: _intake(ws, token) for key, ws in spaces.items()}
    subjects = {key: demo_subjects(ws, LOAD_REQUESTS) for key, ws in spaces.items()}
    submitted: dict[str, list[str]] = {"a": [], "b": []}
    champions: dict[str, list[str]] = {"a": [], "b": []}
    killed = None
    started = time.monotonic()
    try:
        with servers.running(*workers, timeout=300):
            wave, deadline = 0, time.monotonic() + 900
            while True:
                if wave < 5:  # five waves of 10 requests per workspace, 6 s apart, while the flows run
                    for key, (_, _, url) in intakes.items():
                        for subject in subjects[key][wave * 10:(wave + 1) * 10]:
                            created = httpx.post(f"{url}/requests", json={"subject_ids": [subject]}, timeout=30,
                                                 headers={"Authorization": f"Bearer {token}"})
                            assert created.status_code == 201, created.text
                            submitted[key].append(created.json()["id"])
                    wave += 1
                if killed is None:  # a batch of workspace a past its dataset version: kill its worker
                    batch = next(iter(open_batches(spaces["a"])), None)
                    if batch and "dataset_version" in batch.completed and "register" not in batch.completed:
                        running = api("POST", f"{api_url}/flow_runs/filter", json={
                            "flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}},
                            "deployments": {"id": {"any_": [deployments["a"]["deployment_id"]]}}}).json()
                        victim = next((w for w in workers for r in running if r["id"] in w.log.read_text()), None)
                        if victim:
                            os.killpg(victim.process.pid, signal.SIGKILL)
                            for r in running:  # the flow run's own process, should it have left the group
                                pid = (r.get("infrastructure_pid") or "").rpartition(":")[2]
                                if pid.isdigit():
                                    try:
                                        os.kill(int(pid), signal.SIGKILL)
                                    except ProcessLookupError:
                                        pass
                            victim.process.wait(10)
                            # What Prefect's zombie-run automation does once the heartbeats stop: the run
                            # is Crashed, which frees its deployment slot (else held until its lease ends).
                            for r in running:
                                api("POST", f"{api_url}/flow_runs/{r['id']}/set_state", json={
                                    "state": {"type": "CRASHED", "message": "worker killed"}, "force": True})
                            killed = (batch.run_id, time.monotonic(), workers.index(victim))
                for key, ws in spaces.items():
                    store = RequestStore(ws.requests_db)
                    if store.list(("certified",)):
                        promoted = cli(ws, "promote", "--json", env=env, timeout=300)
                        if promoted.returncode == 0 and json.loads(promoted.stdout).get("promoted"):
                            champions[key].append(json.loads(promoted.stdout)["version"])
                done = all(len(submitted[k]) == LOAD_REQUESTS and
                           all(RequestStore(spaces[k].requests_db).get(r).state == "forgotten" for r in submitted[k])
                           for k in spaces)
                if done:
                    break
                assert time.monotonic() < deadline, logs()
                time.sleep(3)
            elapsed = time.monotonic() - started
    finally:
        for server, thread, _ in intakes.values():
            server.should_exit = True
            thread.join(10)

    client = MlflowClient(tracking_uri=live.tracking_uri, registry_uri=live.tracking_uri)
    batches = 0
    for key, ws in spaces.items():
        name = ws.settings.project.model_name
        versions = client.search_model_versions(f"name='{name}'")
        runs = [v.tags.get("unlearnops.run_id") for v in versions if v.version != "1"]
        assert len(runs) == len(set(runs)), f"a run registered twice: {runs}"  # no duplicate model versions
        forgotten_by: Counter = Counter()
        for v in versions:
            forgotten_by.update(r for r in (v.tags.get("unlearnops.requests") or "").split(",") if r)
        assert sorted(forgotten_by) == sorted(submitted[key]) and set(forgotten_by.values()) == {1}, forgotten_by
        for request_id in submitted[key]:
            stored = RequestStore(ws.requests_db).get(request_id)
            assert stored.state == "forgotten" and stored.model_version, stored
        for version in champions[key]:  # the champion was certified at every promotion
            assert client.get_model_version(name, version).tags["unlearnops.certificate_status"] == "certified"
        assert client.get_registered_model(name).aliases["champion"] == champions[key][-1]
        batches += len(runs)
    # The killed batch was finished later, by the run of the surviving worker, which resumed it.
    assert killed, "no batch of workspace a was caught mid-run"
    resumed = Batch.load(spaces["a"], killed[0])
    assert resumed.finished and resumed.resumed >= 1 and resumed.registered_version, resumed
    survivor = workers[1 - killed[2]]
    assert workers[killed[2]].process.poll() is not None and survivor.log.exists()
    print(f"scale load: {2 * LOAD_REQUESTS} requests, {batches} batches, 2 workspaces, 2 workers (one killed "
          f"mid-batch, resumed), {elapsed:.0f} s, {2 * LOAD_REQUESTS / elapsed * 60:.1f} requests/min")
