"""Crash safety and concurrency of the deletion flow on a real workspace.

The flow runs in a subprocess that kills itself (``os._exit(137)``, as ``kill -9``) at one fault point;
the next run resumes. The chain visits every fault point in order: after each step of a batch and at the
points inside a step between an external side effect and its record. After every kill the durable state
must hold the invariants below; the last run must leave exactly one new dataset revision and one new model
version, every request processed once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest

from unlearnops import data, model_registry
from unlearnops.faults import EXIT_CODE, INNER_POINTS
from unlearnops.requests import RequestStore
from unlearnops.flow.batch import STEPS, Batch

FAULT_CHAIN = [
    "locate",
    "dataset_version.features_replaced",
    "dataset_version.committed",
    "dataset_version",
    "unlearn",
    "export",
    "register.version_created",
    "register",
    "finalize",
]


def test_the_chain_visits_every_fault_point():
    assert set(FAULT_CHAIN) == set(STEPS) | set(INNER_POINTS)


def subprocess_env() -> dict[str, str]:
    """This process's environment without what points at another workspace or Prefect server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")
            and k not in ("UNLEARNOPS_TRACKING_URI", "UNLEARNOPS_FAULT_AFTER")}


def cli(ws, *args: str, fault: str | None = None, timeout: float = 300,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``unlearnops ARGS --workspace WS`` in a new process group (killed afterwards with anything it left,
    such as Prefect's ephemeral server); ``env`` adds variables (e.g. server URLs)."""
    env = {**subprocess_env(), "PREFECT_HOME": str(ws.prefect_home), **(env or {})}
    if fault:
        env["UNLEARNOPS_FAULT_AFTER"] = fault
    # Output goes to files, not pipes: a child left behind by the killed process would hold a pipe open.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([sys.executable, "-m", "unlearnops.cli", *args, "--workspace", str(ws.root)],
                                env=env, stdout=out, stderr=errors, text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.seek(0)
        errors.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), errors.read())


def dataset_commits(ws) -> list[str]:
    return data.git(ws.root, "log", "--format=%H", "--", "data.dvc").split()


def live_versions(ws) -> list:
    name = ws.settings.project.model_name
    return sorted(model_registry.client(ws).search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def assert_invariants(ws, request_ids: set[str], base_commits: int, base_versions: int) -> None:
    """What must hold after any crash: no request lost, at most one new dataset revision and model
    version, aliases only on versions that may carry them, batch records readable."""
    stored = {r.id: r for r in RequestStore(ws.requests_db).list()}
    assert request_ids <= set(stored), "a request was lost"
    assert len(dataset_commits(ws)) <= base_commits + 1
    versions = live_versions(ws)
    assert len(versions) <= base_versions + 1
    status = {str(v.version): v.tags.get("unlearnops.certificate_status") for v in versions}
    assert status[model_registry.resolve_version(ws, "champion")] in ("base", "certified")
    candidate = model_registry.resolve_version(ws, "candidate")
    assert candidate is None or status[candidate] == "certified"
    for path in ws.runs_dir.glob("*/batch.json"):
        Batch.model_validate_json(path.read_text())  # never torn


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from tests.conftest import make_workspace
    from unlearnops.project import train_base

    workspace = make_workspace(tmp_path_factory.mktemp("crash") / "ws", limit=600, epochs=3)
    train_base(workspace)
    return workspace


def submit_subjects(ws, count: int, skip: int = 0) -> list[str]:
    from unlearnops.demo import demo_subjects
    from unlearnops.intake import submit

    ids = []
    for subject in demo_subjects(ws, skip + count)[skip:]:
        stored, created = submit(ws, {"subject_ids": [subject], "reason": "crash test"})
        assert created
        ids.append(stored.id)
    return ids


def test_a_kill_at_every_point_then_resume_loses_nothing_and_repeats_nothing(ws):
    request_ids = set(submit_subjects(ws, 3))
    base_commits, base_versions = len(dataset_commits(ws)), len(live_versions(ws))
    run_ids = set()
    for i, point in enumerate(FAULT_CHAIN):
        # The first attempt goes through the real Prefect flow, the resumptions through the same steps
        # without Prefect (cheaper): both share the batch record and resume logic.
        args = ["run", "--json"] if i == 0 else ["run", "--no-prefect", "--json"]
        result = cli(ws, *args, fault=point)
        assert result.returncode == EXIT_CODE, f"{point}: {result.stderr[-3000:]}"
        assert f"fault injected after {point!r}" in result.stderr
        assert_invariants(ws, request_ids, base_commits, base_versions)
        run_ids |= {p.parent.name for p in ws.runs_dir.glob("*/batch.json")}
        assert len(run_ids) == 1, "a re-run opened a second batch instead of resuming"

    batch = Batch.load(ws, run_ids.pop())
    assert batch.finished and batch.resumed == len(FAULT_CHAIN) - 1  # every attempt but the first resumed
    assert len(dataset_commits(ws)) == base_commits + 1
    assert len(live_versions(ws)) == base_versions + 1
    version = live_versions(ws)[-1]
    assert str(version.version) == batch.registered_version
    assert version.tags["unlearnops.run_id"] == batch.run_id  # tags applied despite the kill inside
    if batch.status == "pass":
        assert model_registry.resolve_version(ws, "candidate") == str(version.version)
    stored = RequestStore(ws.requests_db).list()
    assert {r.id for r in stored} == request_ids
    assert {(r.state, r.dataset_rev, r.model_version) for r in stored} == {
        ("certified" if batch.status == "pass" else "uncertified", dataset_commits(ws)[0], batch.registered_version)}

    # The data on disk is the committed version, complete, without the deleted samples, and nothing
    # half-written is left anywhere in the workspace.
    manifest = pd.read_parquet(ws.data_dir / data.MANIFEST_FILE)
    assert not manifest.sample_id.isin(batch.forget_ids).any()
    assert len(data.load_dataset(ws.data_dir)) == batch.dataset_after["n_samples"]
    from contextlib import chdir

    from dvc.repo import Repo

    with chdir(ws.root), Repo(".") as repo:  # data/ matches data.dvc, and the remote has it
        assert repo.status(targets=["data.dvc"]) == {} and repo.status(targets=["data.dvc"], cloud=True) == {}
    leftovers = [p for p in ws.root.rglob("*.tmp") if ".git" not in p.parts]
    assert leftovers == []
    assert not (batch.run_dir(ws) / "forget.npz").exists()

    # Asking again for a subject whose samples are gone is a no-op that returns the original receipt.
    from unlearnops.intake import submit

    first = RequestStore(ws.requests_db).get(sorted(request_ids)[0])
    again_stored, created = submit(ws, {"subject_ids": first.request.subject_ids, "reason": "again"})
    assert (again_stored.id, created) == (first.id, False)
    assert len(RequestStore(ws.requests_db).list()) == len(request_ids)

    # Nothing pending any more: a re-run is a no-op.
    again = cli(ws, "run", "--no-prefect", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == {"result": "no pending deletion requests"}


def test_two_runs_at_once_one_processes_the_other_exits_cleanly(ws):
    request_ids = set(submit_subjects(ws, 2, skip=10))
    commits, versions = len(dataset_commits(ws)), len(live_versions(ws))
    env = subprocess_env()
    batches_before = len(list(ws.runs_dir.glob("*/batch.json")))
    first = subprocess.Popen(
        [sys.executable, "-m", "unlearnops.cli", "run", "--no-prefect", "--json", "--workspace", str(ws.root)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(ws.runs_dir.glob("*/batch.json"))) <= batches_before and time.monotonic() < deadline:
        time.sleep(0.1)  # wait until the first run has opened its batch (holding the lock)
    second = cli(ws, "run", "--no-prefect", "--json")
    out, errors = first.communicate(timeout=300)
    assert first.returncode == 0, errors[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "the workspace is busy" in json.loads(second.stdout)["skipped"]
    summary = json.loads(out)
    assert set(summary["requests"]) == request_ids
    assert len(dataset_commits(ws)) == commits + 1 and len(live_versions(ws)) == versions + 1
    states = {r.state for r in RequestStore(ws.requests_db).list()}
    assert states in ({"certified"}, {"uncertified"}), states
