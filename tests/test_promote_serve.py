"""CI-gated promotion and ONNX serving on a workspace with several real deletion batches."""

import json
import threading
import time

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from conftest import make_workspace
from unlearnops import model_registry
from unlearnops.cli import app
from unlearnops.servers import free_port

runner = CliRunner()


def process_batch(ws, subjects, method=None):
    """One deletion batch through the same steps the Prefect flow runs (in-process)."""
    from unlearnops.intake import submit
    from unlearnops.flow.run import process_pending

    submit(ws, {"subject_ids": subjects, "reason": "promotion test"})
    return process_pending(ws, method=method)


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """v1 base; v2 unlearned from v1, then v3 from v2 and v4 (a no-op, not certified) from v3: three batches
    before any promotion, each starting from the unpromoted candidate so that deletions accumulate. v4's
    requests stay open and block every promotion until v5 (retrain from v3, carrying v4's samples) certifies."""
    from noop_plugin import NoOpPlugin
    from unlearnops.demo import demo_subjects
    from unlearnops.plugin_manager import register_plugin, unregister_plugin
    from unlearnops.project import train_base

    ws = make_workspace(tmp_path_factory.mktemp("promote") / "ws")
    # The tiny test split (~225 samples) makes a 2-point utility bound flip on one or two samples; these
    # tests are about promotion and serving, so the workspace allows 6 points (thresholds are config).
    settings = ws.settings.model_copy(deep=True)
    settings.gates.utility_max_drop = 0.06
    ws.write_settings(settings, ws.params)
    train_base(ws)
    subjects = demo_subjects(ws, 70)
    v2 = process_batch(ws, subjects[:40])
    v3 = process_batch(ws, subjects[40:55])
    register_plugin(NoOpPlugin(), "noop-plugin")
    try:
        v4 = process_batch(ws, subjects[55:70], method="noop")
    finally:
        unregister_plugin("noop-plugin")
    assert (v2.registered_version, v3.registered_version, v4.registered_version) == ("2", "3", "4")
    assert (v2.parent_version, v3.parent_version, v4.parent_version) == ("1", "2", "3")
    assert v2.status == "pass", [(g.name, g.status, g.summary) for g in v2.gates]
    assert v4.status != "pass", [(g.name, g.status, g.summary, g.metrics) for g in v4.gates]
    # v3 is certified, but its training data still holds v4's samples, which no certified version forgot.
    code, decision = _promote(ws, "3", "--check")
    assert code == 1 and any(v4.request_ids[0] in r and "still holds samples" in r for r in decision["reasons"])
    from unlearnops.flow.run import process_pending

    v5 = process_pending(ws, method="retrain")  # nothing new: the open requests alone, with an exact method
    assert v5.registered_version == "5" and v5.parent_version == "3" and v5.status == "pass"
    assert v5.request_ids == v4.request_ids and set(v5.forget_ids) == set(v4.forget_ids)
    return ws


def _promote(ws, *args):
    result = runner.invoke(app, ["promote", *args, "--workspace", str(ws.root), "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_check_changes_nothing_then_promotion_moves_champion_and_taints(lineage):
    ws = lineage
    # v3 descends from the champion through certified v2: promoting it directly would keep both deletions.
    code, decision = _promote(ws, "3", "--check")
    assert code == 0 and decision["promotable"] and "lineage" in decision["checked"], decision
    code, decision = _promote(ws, "2", "--check")
    assert code == 0 and decision["promotable"] and not decision["promoted"]
    assert {"signature", "weights_sha256", "onnx_sha256", "tags", "certified", "lineage", "onnx_parity"} <= set(
        decision["checked"])
    assert model_registry.resolve_version(ws, "champion") == "1"
    code, decision = _promote(ws, "2")
    assert code == 0 and decision["promoted"] and decision["tainted"] == ["1"]
    assert model_registry.resolve_version(ws, "champion") == "2"
    tags = model_registry.client(ws).get_model_version(ws.settings.project.model_name, "1").tags
    assert tags["unlearnops.tainted"] == "true"


def test_refusals_name_their_reasons(lineage):
    ws = lineage
    if model_registry.resolve_version(ws, "champion") != "2":
        _promote(ws, "2")
    code, decision = _promote(ws, "3", "--check")  # from the champion v2 now
    assert code == 0 and "lineage" in decision["checked"], decision["reasons"]
    code, decision = _promote(ws, "4", "--check")  # the no-op batch
    assert code == 1 and any("not 'certified'" in r for r in decision["reasons"]), decision["reasons"]
    code, decision = _promote(ws, "1", "--check")
    assert code == 1 and any(r.startswith("tainted") for r in decision["reasons"])
    assert any("not newer" in r for r in decision["reasons"])
    bad = runner.invoke(app, ["promote", "77", "--check", "--workspace", str(ws.root), "--json"])
    assert bad.exit_code == 1


def test_lineage_rule_refuses_forks_and_uncertified_ancestors():
    from types import SimpleNamespace

    from unlearnops.model_registry import lineage_problems

    def version(parent, status="certified"):
        return SimpleNamespace(tags={"unlearnops.parent_version": parent, "unlearnops.certificate_status": status})

    versions = {"1": version(None), "2": version("1"), "3": version("2"), "4": version("1"),
                "5": version("3", "not-certified (fail)"), "6": version("5")}
    assert lineage_problems(versions, "3", "1") == [] and lineage_problems(versions, "3", "2") == []
    fork = lineage_problems(versions, "4", "2")  # made from v1 while v2 was the candidate: loses v2's deletions
    assert len(fork) == 1 and "v4 → v1" in fork[0] and "bring back" in fork[0]
    (uncertified,) = lineage_problems(versions, "6", "3")
    assert "ancestor v5 is not certified" in uncertified


def test_tampered_candidate_is_refused(lineage, tmp_path):
    ws = lineage
    mv = model_registry.client(ws).get_model_version(ws.settings.project.model_name, "3")
    (cert_path,) = ws.mlflow_artifacts.glob(f"**/{mv.run_id}/artifacts/certificate.json")
    original = cert_path.read_bytes()
    cert = json.loads(original)
    cert["status"] = "certified" if cert["status"] != "certified" else "certified "
    cert_path.write_text(json.dumps(cert))
    try:
        code, decision = _promote(ws, "3", "--check")
    finally:
        cert_path.write_bytes(original)
    assert code == 1 and any("contents were changed" in r for r in decision["reasons"])


@pytest.fixture
def server(lineage):
    from unlearnops.deploy.serve import create_app

    ws = lineage
    if model_registry.resolve_version(ws, "champion") != "2":
        _promote(ws, "2")
    port = free_port()
    config = uvicorn.Config(create_app(ws, max_batch=32, poll_seconds=0.5, auth=False), host="127.0.0.1", port=port,
                            log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    yield ws, base
    instance.should_exit = True
    thread.join(timeout=10)


def test_serving_predicts_rejects_bad_input_and_follows_the_champion(server):
    from unlearnops.demo import demo_subjects

    ws, base = server
    info = httpx.get(base + "/model").json()
    assert info["version"] == "2" and info["certificate"]["status"] == "certified"
    assert info["input_shape"] == [1, 28, 28] and "CPUExecutionProvider" in info["providers"]
    sample = [[[[0.0] * 28] * 28]]
    answer = httpx.post(base + "/predict", json={"inputs": sample * 3})
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3

    wrong_shape = httpx.post(base + "/predict", json={"inputs": [[1.0, 2.0]]})
    assert wrong_shape.status_code == 422 and "shape [1, 28, 28]" in wrong_shape.json()["detail"]
    assert httpx.post(base + "/predict", json={"inputs": [["a"]]}).status_code == 422
    assert httpx.post(base + "/predict", json={"inputs": sample * 33}).status_code == 413

    # A new certified version from the champion, promoted while the service keeps answering.
    batch = process_batch(ws, demo_subjects(ws, 15))
    assert batch.status == "pass", [(g.name, g.status, g.summary) for g in batch.gates]
    code, _ = _promote(ws, batch.registered_version)
    assert code == 0
    served, failures = set(), 0
    deadline = time.time() + 30
    while time.time() < deadline and batch.registered_version not in served:
        response = httpx.post(base + "/predict", json={"inputs": sample})
        failures += response.status_code != 200
        served.add(response.json().get("version"))
        time.sleep(0.05)
    assert batch.registered_version in served and failures == 0
    assert httpx.get(base + "/health").json()["version"] == batch.registered_version
