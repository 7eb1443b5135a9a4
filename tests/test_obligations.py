"""No deletion obligation is lost: an uncertified batch leaves its requests open (``run`` exits 3), the next
batch forgets both batches' samples, promotion refuses a version that still holds an open request's
samples, purge keeps what an open request needs, and a forgotten request gets a signed receipt. Also:
intake conflicts and duplicates, deadlines."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import make_workspace
from unlearnops import api, data, model_registry
from unlearnops.cli import app
from unlearnops.requests import RequestStore

runner = CliRunner()


def cli(ws, *args):
    result = runner.invoke(app, [*args, "--workspace", str(ws.root), "--json"])
    return result.exit_code, json.loads(result.stdout)


def subject_samples(ws, subject: str) -> set[str]:
    """The sample ids of ``subject`` in dataset version 1 (the base model's training data)."""
    manifest = pd.read_parquet(ws.data_dir / data.MANIFEST_FILE)
    return set(manifest.loc[manifest["subject_id"] == subject, "sample_id"])


def isolated_subjects(ws, count: int) -> list[str]:
    """Train-split subjects whose id is no substring of another subject id (so a byte scan is exact)."""
    manifest = pd.read_parquet(ws.data_dir / data.MANIFEST_FILE)
    everyone = set(manifest["subject_id"].astype(str))
    train = sorted(set(manifest.loc[manifest["split"] == "train", "subject_id"].astype(str)))
    return [s for s in train if not any(s != o and s in o for o in everyone)][:count]


def workspace_files_holding(ws, needle: bytes) -> list[str]:
    hits = [str(p.relative_to(ws.root)) for p in sorted(ws.root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(ws.root).parts and needle in p.read_bytes()]
    import subprocess

    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=ws.root,
                             capture_output=True, check=True).stdout
    return hits + (["git objects"] if needle in objects else [])


@pytest.fixture(scope="module")
def noop():
    from noop_plugin import NoOpPlugin
    from unlearnops.plugin_manager import register_plugin, unregister_plugin

    register_plugin(NoOpPlugin(), "noop-plugin")
    yield
    unregister_plugin("noop-plugin")


def test_obligations_survive_an_uncertified_batch_until_promotion(tmp_path_factory, noop):
    from unlearnops.certificate import CertificateError, verify
    from unlearnops.keys import public_key
    from unlearnops.project import train_base

    ws = make_workspace(tmp_path_factory.mktemp("obligations") / "ws", limit=600, epochs=3)
    settings = ws.settings.model_copy(deep=True)
    settings.gates.utility_max_drop = 0.2  # a ~90-sample test split; this test is about obligations
    ws.write_settings(settings, ws.params)
    train_base(ws)
    x, a, b, d = isolated_subjects(ws, 4)
    samples = {s: subject_samples(ws, s) for s in (x, a, b, d)}
    manifest = pd.read_parquet(ws.data_dir / data.MANIFEST_FILE)
    trained = set(manifest.loc[manifest["split"] == "train", "sample_id"])
    store = RequestStore(ws.requests_db)

    # C: a certified candidate v2 for subject x (not promoted yet).
    code, req_x = cli(ws, "request", "submit", "--subject", x)
    code, first = cli(ws, "run", "--no-prefect", "--method", "retrain")
    assert code == 0 and first["certificate_status"] == "certified", first
    assert store.get(req_x["id"]).state == "certified"

    # U: an uncertified batch v3 for subject a: `run` exits 3, the request stays open and says why.
    code, req_a = cli(ws, "request", "submit", "--subject", a)
    code, second = cli(ws, "run", "--no-prefect", "--method", "noop")
    assert code == 3 and second["certificate_status"] != "certified", second
    open_a = {r["id"]: r for r in second["requests_open"]}[req_a["id"]]
    assert open_a["state"] == "uncertified" and open_a["model_version"] == "3" and open_a["reasons"]
    assert {r["id"] for r in second["requests_open"]} == {req_x["id"], req_a["id"]}
    assert (ws.runs_dir / second["run_id"] / "forget.npz").is_file()  # kept: the obligation needs it

    # Promotion of the certified v2 is refused: its training data still holds a's samples.
    # (through the API: the CLI runs promotion as a Prefect flow, which tests/test_promote_serve.py covers)
    decision = api.promote(ws, "2", check=True)
    assert not decision["promotable"]
    assert any(req_a["id"] in r and "still holds samples" in r for r in decision["reasons"]), decision
    decision = api.promote(ws, "2")
    assert not decision["promoted"] and model_registry.resolve_version(ws, "champion") == "1"

    # The next batch (subject b) forgets a's samples too, from v2: checked on the samples.
    code, req_b = cli(ws, "request", "submit", "--subject", b)
    code, third = cli(ws, "run", "--no-prefect", "--method", "retrain")
    assert code == 0 and third["certificate_status"] == "certified" and third["parent_version"] == "2", third
    assert set(third["requests"]) == {req_a["id"], req_b["id"]}
    assert third["samples_removed"] == len(samples[a] | samples[b])
    cert = json.loads((ws.runs_dir / third["run_id"] / "certificate.json").read_text())
    certified_ids = {row["sample_id"] for row in cert["located"]["samples"]}
    assert samples[a] | samples[b] <= certified_ids
    assert {row["sample_id"] for row in cert["located"]["samples"] if row["locator"] == "carried"} == samples[a]
    # The methods got every trained sample of both batches (the carried ones from the uncertified run's copy).
    assert third["forget_samples_trained"] == len(trained & (samples[a] | samples[b])) > len(trained & samples[b])
    remaining = set(pd.read_parquet(ws.data_dir / data.MANIFEST_FILE)["sample_id"])
    assert not (samples[x] | samples[a] | samples[b]) & remaining
    assert not list(ws.runs_dir.glob("*/forget.npz"))  # certified: every copy of the forgotten samples is gone

    decision = api.promote(ws, "4")
    assert decision["promoted"], decision
    assert set(decision["forgotten"]) == {req_x["id"], req_a["id"], req_b["id"]}
    assert {store.get(r["id"]).state for r in (req_x, req_a, req_b)} == {"forgotten"}

    # Purge's rule: an open, cut request whose copy is gone makes purge refuse, naming it.
    code, req_d = cli(ws, "request", "submit", "--subject", d)
    code, fourth = cli(ws, "run", "--no-prefect", "--method", "noop")
    assert code == 3
    copy = ws.runs_dir / fourth["run_id"] / "forget.npz"
    saved = copy.read_bytes()
    copy.unlink()
    code, refused = cli(ws, "purge", "--dry-run")
    assert code == 1 and req_d["id"] in refused["error"] and "retrain" in refused["error"]
    copy.write_bytes(saved)
    code, report = cli(ws, "purge")
    assert code == 0 and report["waiting_requests"] == [req_d["id"]], report
    assert set(report["requests"]) == {req_x["id"], req_a["id"], req_b["id"]}
    assert copy.is_file()  # what the open request needs stays

    # Forgotten and purged: no raw id of those subjects is anywhere in the workspace.
    for subject in (x, a, b):
        assert workspace_files_holding(ws, subject.encode()) == [], subject
    assert workspace_files_holding(ws, d.encode())  # d's obligation is open: its data is still kept

    # The receipt names what was done and verifies with the workspace's public key.
    code, receipt = cli(ws, "request", "receipt", req_a["id"])
    assert code == 0 and receipt["champion_version"] == "4" and receipt["certified_version"] == "4"
    assert receipt["dataset_rev_without_samples"] == third["dataset_rev_after"]
    assert receipt["samples_removed"] == len(samples[a]) and receipt["purged"]["dvc-cache"] > 0
    assert a not in json.dumps(receipt) and len(receipt["subjects_hmac_sha256"]) == 1
    verify(receipt, public_key(ws))
    with pytest.raises(CertificateError):
        verify({**receipt, "champion_version": "1"}, public_key(ws))
    code, refused = cli(ws, "request", "receipt", req_d["id"])
    assert code == 1 and "uncertified" in refused["error"]


def test_idempotency_conflict_duplicates_and_deadlines(fresh_workspace):
    ws = fresh_workspace
    manifest = pd.read_parquet(ws.data_dir / data.MANIFEST_FILE)
    s1, s2 = sorted(manifest["subject_id"].unique())[:2]
    code, first = cli(ws, "request", "submit", "--subject", s1, "--idempotency-key", "k-1")
    assert code == 0 and first["created"] and first["days_left"] in (29, 30)
    code, conflict = cli(ws, "request", "submit", "--subject", s2, "--idempotency-key", "k-1")
    assert code == 1 and "k-1" in conflict["error"] and first["id"] in conflict["error"]
    code, same = cli(ws, "request", "submit", "--subject", s1, "--idempotency-key", "k-1")
    assert code == 0 and same["id"] == first["id"] and not same["created"]
    code, duplicate = cli(ws, "request", "submit", "--subject", s1)  # same targets as an open request
    assert code == 0 and duplicate["id"] == first["id"] and not duplicate["created"]
    assert len(RequestStore(ws.requests_db).list()) == 1

    code, listed = cli(ws, "request", "list")
    assert listed[0]["days_left"] in (29, 30) and listed[0]["overdue"] is False
    assert runner.invoke(app, ["status", "--overdue", "--workspace", str(ws.root)]).exit_code == 0
    db = sqlite3.connect(ws.requests_db)
    db.execute("UPDATE requests SET due_at='2000-01-01T00:00:00+00:00'")
    db.commit()
    db.close()
    code, status = cli(ws, "status", "--overdue")
    assert code == 1 and status["overdue"] == [first["id"]]
    assert status["open_requests"][0]["days_left"] < 0
    assert runner.invoke(app, ["status", "--workspace", str(ws.root)]).exit_code == 0  # without --overdue


def test_old_processed_rows_are_read_and_mapped(tmp_path):
    from unlearnops.requests import DeletionRequest

    path = tmp_path / "requests.db"
    store = RequestStore(path)
    stored, _ = store.add(DeletionRequest(subject_ids=["s1"]))
    db = sqlite3.connect(path)
    db.execute("UPDATE requests SET state='processed', dataset_rev='rev', model_version='2', due_at=NULL")
    db.commit()
    db.close()
    again = RequestStore(path).get(stored.id)  # re-opened: due date filled in, legacy state read as cut
    assert again.state == "cut" and again.open and again.due_at and [r.id for r in store.list(("cut",))] == [stored.id]
    assert store.legacy() == [(stored.id, "2")]
    store.settle_legacy(stored.id, "uncertified", reasons=["old"])
    assert store.get(stored.id).state == "uncertified" and store.legacy() == []
