"""The scale path, for real: the same CLI flows (train → request → Prefect deletion flow → promote) against a
real ``mlflow server`` (sqlite backend store, artifacts proxied to a directory on disk) and a real
``prefect server start``, both on 127.0.0.1, selected only by ``UNLEARNOPS_TRACKING_URI`` and
``PREFECT_API_URL``. Everything must end up on the servers: versions, aliases, tags and artifacts in MLflow
(nothing in the workspace's embedded registry), flow runs Completed in Prefect (no ephemeral Prefect
database). A second test runs the deletion flow the production way: a deployment of a work pool, run by a
``prefect worker`` process; a third runs the bootstrap job script of ``deploy/`` (twice) with a directory
standing in for the S3 DVC remote. Servers are stopped afterwards, also when an assertion fails.
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


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A tiny untrained workspace and real MLflow and Prefect servers on loopback; the servers are checked
    to be gone afterwards."""
    root = tmp_path_factory.mktemp("scale")
    mlflow_server = servers.mlflow_server(root / "mlflow-server")
    prefect_server = servers.prefect_server(root / "prefect-server")
    ws = make_workspace(root / "ws")  # dataset version 1 only: no registry, no orchestration yet
    # The tiny test split makes a 2-point utility bound flip on one or two samples (see test_promote_serve);
    # these tests are about where things run, so the workspace allows 6 points (a threshold from config).
    settings = ws.settings.model_copy(deep=True)
    settings.gates.utility_max_drop = 0.06
    ws.write_settings(settings, ws.params)
    with servers.running(mlflow_server, prefect_server, timeout=600) as (tracking_uri, api_url):
        yield Live(ws, tracking_uri, api_url, {"UNLEARNOPS_TRACKING_URI": tracking_uri, "PREFECT_API_URL": api_url},
                   root)
    for server in (mlflow_server, prefect_server):  # ``servers.running`` stops them, also on failure
        assert server.process.poll() is not None, f"{server.name} still running"
        assert not servers.answers(server.health_url)


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

    # Artifacts went through the server's proxy into its artifact directory, none to the workspace.
    run = client.get_run(v2.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert RUN_ARTIFACTS <= {a.path for a in client.list_artifacts(v2.run_id)}
    server_files = live.root / "mlflow-server" / "artifacts"
    model_uri = client.get_model_version_download_uri(name, "2")  # the registered torch model's files
    assert model_uri.startswith("mlflow-artifacts:/"), model_uri
    assert (server_files / model_uri.removeprefix("mlflow-artifacts:").lstrip("/") / "MLmodel").is_file(), model_uri
    (stored,) = server_files.glob(f"**/{v2.run_id}/artifacts/certificate.json")
    downloaded = client.download_artifacts(v2.run_id, "certificate.json", str(tmp_path))
    assert json.loads(stored.read_text()) == json.loads(open(downloaded).read())
    assert json.loads(stored.read_text())["status"] == "certified"
    assert not ws.mlflow_db.exists() and not ws.mlflow_artifacts.exists()

    # The flow runs are the Prefect server's: Completed there, and no ephemeral Prefect database.
    states = _flow_run_states(api_url)
    assert states[("deletion-requests", "COMPLETED")] == 1, states
    assert states[("promote-candidate", "COMPLETED")] == 2, states
    assert sum(n for (_, state), n in states.items() if state != "COMPLETED") == 0, states
    assert not (ws.prefect_home / "prefect.db").exists()
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

    worker = servers.prefect_worker("gpu", api_url, live.root / "worker.log",
                                    env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"})
    with servers.running(worker, timeout=300):
        flow_run = api("POST", f"{api_url}/deployments/{deployment['deployment_id']}/create_flow_run",
                       json={}).json()
        deadline = time.monotonic() + 600
        while True:
            flow_run = api("GET", f"{api_url}/flow_runs/{flow_run['id']}").json()
            if flow_run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.monotonic() < deadline, (live.root / "worker.log").read_text()[-4000:]
            time.sleep(2)
    assert flow_run["state_type"] == "COMPLETED", (live.root / "worker.log").read_text()[-4000:]
    assert flow_run["work_pool_name"] == "gpu" and flow_run["deployment_id"] == deployment["deployment_id"]

    done = RequestStore(ws.requests_db).get(receipt["id"])
    assert done.state in ("certified", "uncertified") and done.model_version, done
    client = MlflowClient(tracking_uri=live.tracking_uri, registry_uri=live.tracking_uri)
    version = client.get_model_version(ws.settings.project.model_name, done.model_version)
    assert version.tags["unlearnops.parent_version"] == champion
    assert version.tags["unlearnops.requests"] == receipt["id"]


def test_the_bootstrap_job_script_sets_up_a_workspace_on_the_servers(live, tmp_path):
    """deploy/docker/bootstrap-workspace.sh as the compose and Kubernetes jobs run it (a directory instead of
    the S3 DVC remote; its own MLflow server, since the model name is the project's key in a registry), run
    twice: the second run (a restarted job) changes nothing."""
    from mlflow import MlflowClient

    script = Path(__file__).resolve().parents[1] / "deploy" / "docker" / "bootstrap-workspace.sh"
    remote = tmp_path / "dvc-remote"
    registry_server = servers.mlflow_server(tmp_path / "mlflow-server")
    with servers.running(registry_server, timeout=600) as (tracking_uri,):
        env = {**subprocess_env(), "PREFECT_API_URL": live.api_url, "UNLEARNOPS_TRACKING_URI": tracking_uri,
               "UNLEARNOPS_WORKSPACE": str(tmp_path / "ws"), "UNLEARNOPS_DVC_REMOTE_URL": str(remote),
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
    assert "remote = storage" in config and str(remote) in config
    assert list(remote.rglob("*")), "dvc push left the object-storage remote empty"
    deployment = api("GET", f"{live.api_url}/deployments/{first['deployment_id']}").json()
    assert deployment["work_pool_name"] == "bootstrap-pool"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
