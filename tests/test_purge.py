"""Purge: a sample with a unique byte pattern goes through the real pipeline (request → deletion batch →
promotion) and, after ``unlearnops purge``, its bytes are nowhere in the workspace: not in the working tree,
the DVC cache, run cache or remote, the MLflow artifact store or sqlite databases, nor in any git object
(decompressed). Before the purge the same scan finds them, so the test can fail."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import make_workspace
from unlearnops import data, model_registry
from unlearnops.cli import app
from unlearnops.datasets import build_manifest, stable_split

runner = CliRunner()
CANARY_SUBJECT = "canary-subject"


def canary_sample() -> tuple[np.ndarray, str]:
    """Random pixels (a sequence that occurs nowhere else) under a sample id that lands in the train split."""
    sample_id = next(f"canary-{i}" for i in range(1000) if stable_split(f"canary-{i}") == "train")
    pixels = np.random.default_rng(987654321).random((1, 1, 28, 28), dtype=np.float32)
    return pixels, sample_id


def scan(ws, pattern: bytes) -> list[str]:
    """Every place under the workspace that holds ``pattern``: files byte for byte (git's internals
    excepted), and every git object, loose or packed, decompressed by ``git cat-file``."""
    hits = []
    for path in sorted(ws.root.rglob("*")):
        if path.is_file() and ".git" not in path.relative_to(ws.root).parts and pattern in path.read_bytes():
            hits.append(str(path.relative_to(ws.root)))
    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=ws.root,
                             capture_output=True, check=True).stdout
    assert objects, "git cat-file returned no objects"
    if pattern in objects:
        hits.append("git objects")
    return hits


def purge_cli(ws, *args):
    result = runner.invoke(app, ["purge", *args, "--workspace", str(ws.root), "--json"])
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture(scope="module")
def canary_ws(tmp_path_factory):
    """A tiny trained workspace whose dataset version 2 adds the canary sample (in the train split)."""
    from unlearnops.project import train_base

    ws = make_workspace(tmp_path_factory.mktemp("purge") / "ws", limit=600, epochs=3)
    settings = ws.settings.model_copy(deep=True)
    settings.gates.utility_max_drop = 0.2  # a ~90-sample test split; this test is about bytes, not utility
    ws.write_settings(settings, ws.params)
    dataset = data.load_dataset(ws.data_dir, mmap=False)
    pixels, sample_id = canary_sample()
    row = build_manifest([sample_id], [CANARY_SUBJECT], np.array([int(dataset.labels[0])]), pixels)
    data.save_dataset(ws.data_dir, data.Dataset(np.concatenate([dataset.features, pixels]),
                                                pd.concat([dataset.manifest, row], ignore_index=True)))
    data.commit_dataset_version(ws, "add the canary sample")
    train_base(ws)
    return ws, pixels.tobytes()[1024:1088]


def process(ws, payload):
    from unlearnops.intake import submit
    from unlearnops.flow.run import process_pending

    stored, created = submit(ws, {**payload, "reason": "purge test"})
    assert created
    batch = process_pending(ws, method="retrain")
    assert batch.status == "pass", [(g.name, g.status, g.summary) for g in batch.gates]
    return stored, batch


def test_deleted_bytes_are_nowhere_after_purge(canary_ws):
    from unlearnops.demo import demo_subjects
    from unlearnops.requests import RequestStore

    ws, pattern = canary_ws
    assert scan(ws, pattern), "the canary is not in the workspace to begin with"
    others = [s for s in demo_subjects(ws, 8) if s != CANARY_SUBJECT]
    canary_request, first = process(ws, {"subject_ids": [CANARY_SUBJECT, *others[:3]]})

    # Nothing promoted yet: purge refuses, with the reason, and changes nothing.
    code, refused = purge_cli(ws)
    assert code == 1 and "no successor has been promoted" in refused["error"]
    # A second batch before the promotion unlearns from the unpromoted v2 (deletions accumulate); while only v2
    # is promoted, that request waits for its version, so its samples' bytes must stay.
    second_request, second = process(ws, {"subject_ids": others[3:6]})
    assert second.parent_version == first.registered_version
    assert runner.invoke(app, ["promote", first.registered_version, "--workspace", str(ws.root)]).exit_code == 0
    code, early = purge_cli(ws, "--dry-run")
    assert code == 0 and early["requests"] == [canary_request.id]
    assert early["waiting_requests"] == [second_request.id] and early["model_versions"] == ["1"]
    assert runner.invoke(app, ["promote", second.registered_version, "--workspace", str(ws.root)]).exit_code == 0

    before = scan(ws, pattern)
    assert "data/features.npy" not in before  # the deletion batch removed it from the working data
    assert any(h.startswith(".dvc/cache/files/") for h in before), before
    assert any(h.startswith(".unlearnops/dvc-remote/files/") for h in before), before
    assert "prepared/train.npz" in before, before

    code, dry = purge_cli(ws, "--dry-run")
    assert code == 0 and dry["dry_run"] and dry["removed_count"] > 0
    assert scan(ws, pattern) == before  # a dry run removes nothing

    code, report = purge_cli(ws)
    assert code == 0, report
    assert report["removed_count"] == dry["removed_count"]
    assert report["champion"] == second.registered_version
    assert report["requests"] == [canary_request.id, second_request.id] and report["waiting_requests"] == []
    # Ancestors of the champion were trained on (v1) or unlearned from (v2) data deleted since.
    assert set(report["model_versions"]) == {"1", first.registered_version}
    for store in ("dvc-cache", "dvc-remote", "dvc-run-cache", "workspace", "mlflow-model", "mlflow-run",
                  "run-scratch"):
        assert report["removed"][store]["count"] > 0, (store, report["removed"])
        assert report["removed"][store]["bytes"] > 0

    assert scan(ws, pattern) == []

    # Idempotent: a second purge finds nothing left.
    code, again = purge_cli(ws)
    assert code == 0 and again["removed_count"] == 0 and again["removed"] == {}

    # The purged versions keep their audit trail but not their weights; the champion is untouched.
    client = model_registry.client(ws)
    name = ws.settings.project.model_name
    for version in ("1", first.registered_version):
        tags = client.get_model_version(name, version).tags
        assert tags["unlearnops.purged"] == "true" and tags["unlearnops.tainted"] == "true"
        with pytest.raises(Exception):
            model_registry.load_model(ws, version)
    verified = runner.invoke(app, ["certificate", "verify", first.registered_version, "--workspace",
                                   str(ws.root), "--json"])
    result = json.loads(verified.stdout)
    assert verified.exit_code == 0 and result["purged"] and {"signature", "tags", "purge_record"} <= set(
        result["checked"])
    # Purged by a signed record (not the tag): it names the version, its run and what was removed.
    from unlearnops.deploy.serve import ModelServer
    from unlearnops.verification import purge_record

    record = purge_record(ws, client.get_model_version(name, first.registered_version))
    assert record["version"] == first.registered_version and record["champion"] == second.registered_version
    assert any(r.endswith("model.safetensors") for r in record["removed"]), record["removed"]
    with pytest.raises(RuntimeError, match="purged"):
        ModelServer(ws).load(first.registered_version)
    champion = json.loads(runner.invoke(app, ["certificate", "verify", second.registered_version,
                                              "--workspace", str(ws.root), "--json"]).stdout)
    assert champion["ok"] and not champion["purged"] and "weights_sha256" in champion["checked"]
    decision = runner.invoke(app, ["promote", first.registered_version, "--check", "--workspace", str(ws.root),
                                   "--json"])
    assert decision.exit_code == 1 and any("purged" in r for r in json.loads(decision.stdout)["reasons"])
    stored = RequestStore(ws.requests_db).get(canary_request.id)
    assert stored.state == "forgotten" and stored.certified_version == first.registered_version
    assert stored.purged["dvc-cache"] > 0 and all(s.startswith("hmac:") for s in stored.request.subject_ids)

    # The current dataset is intact in the cache and the remote.
    from contextlib import chdir

    from dvc.repo import Repo

    with chdir(ws.root), Repo(".") as repo:
        assert repo.status(targets=["data.dvc"]) == {} and repo.status(targets=["data.dvc"], cloud=True) == {}


def test_tracked_data_committed_to_git_is_reported_not_hidden(canary_ws):
    ws, _ = canary_ws
    if model_registry.resolve_version(ws, "champion") == "1":
        pytest.skip("needs the promoted lineage of the previous test")
    data.git(ws.root, "add", "-f", "data/manifest.parquet")
    data.git(ws.root, "commit", "-q", "-m", "a mistake: tracked data in git")
    code, report = purge_cli(ws)
    assert code == 1 and not report["complete"] and report["git_history"] == ["data/manifest.parquet"]
