"""The scheduled deletion flow on a real Prefect server (about 1-2 minutes): `unlearnops schedule` starts a
local server on 127.0.0.1 and serves the flow every few seconds; a request submitted afterwards is processed
by a scheduled run."""

import sys
import time

import pytest

from tests.test_crash import submit_subjects, subprocess_env
from unlearnops.requests import RequestStore
from unlearnops.servers import LocalServer


@pytest.fixture
def trained_small(tmp_path):
    from tests.conftest import make_workspace
    from unlearnops.project import train_base

    ws = make_workspace(tmp_path / "ws", limit=400, epochs=2)
    train_base(ws)
    return ws


def test_a_scheduled_run_processes_a_submitted_request(trained_small, tmp_path):
    ws = trained_small
    env = {**subprocess_env(), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    scheduler = LocalServer("unlearnops schedule", [sys.executable, "-m", "unlearnops.cli", "schedule",
                                                    "--interval", "5", "--workspace", str(ws.root)],
                            url="", health_url="", log=tmp_path / "schedule.log", env=env)
    scheduler.start()
    try:
        [request_id] = submit_subjects(ws, 1)
        store = RequestStore(ws.requests_db)
        deadline = time.monotonic() + 420
        while store.get(request_id).state not in ("certified", "uncertified", "rejected"):  # until finalized
            assert scheduler.process.poll() is None, scheduler.log.read_text()[-3000:]
            assert time.monotonic() < deadline, scheduler.log.read_text()[-3000:]
            time.sleep(2)
    finally:
        scheduler.stop(grace=30)
    done = store.get(request_id)
    assert done.model_version == "2" and done.dataset_rev
