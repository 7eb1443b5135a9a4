import pytest

from unlearnops.intake import parse_request, submit
from unlearnops.locate import check_request, locate
from unlearnops.keys import keyed_hash
from unlearnops.requests import DeletionRequest, IdempotencyConflict, RequestRejected, RequestStore


def test_request_normalizes_ids():
    r = parse_request({"subject_ids": ["b", "a", "b"], "content_sha256": ["A" * 64]})
    assert r.subject_ids == ["a", "b"]
    assert r.content_sha256 == ["a" * 64]


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({}, "at least one"),
        ({"subject_ids": ["ok", "bad id with spaces"]}, "malformed id 'bad id with spaces'"),
        ({"sample_ids": ["x" * 200]}, "malformed id"),
        ({"content_sha256": ["abc"]}, "malformed sha256"),
        ({"subject_ids": ["a"], "colour": "red"}, "colour"),
        ({"subject_ids": ["a"], "reason": ""}, "reason"),
    ],
)
def test_bad_requests_are_rejected_with_the_reason(payload, fragment):
    with pytest.raises(RequestRejected, match=fragment):
        parse_request(payload)


def test_store_lifecycle_and_idempotency(tmp_path):
    store = RequestStore(tmp_path / "requests.db")
    first, created = store.add(DeletionRequest(subject_ids=["s1"], idempotency_key="k-1"))
    assert created and first.state == "received"
    again, created = store.add(DeletionRequest(subject_ids=["s1"], idempotency_key="k-1"))
    assert not created and again.id == first.id and again.request.subject_ids == ["s1"]
    with pytest.raises(IdempotencyConflict, match=f"used for request {first.id}"):
        store.add(DeletionRequest(subject_ids=["s2"], idempotency_key="k-1"))
    assert len(store.list()) == 1

    store.mark_located({first.id: ["x2", "x1"]})
    assert store.get(first.id).located_sample_ids == ["x1", "x2"]
    store.mark_failed([first.id], "boom")
    failed = RequestStore(tmp_path / "requests.db").get(first.id)  # a new handle: state is durable
    assert failed.state == "failed" and failed.attempts == 1 and [r.id for r in store.pending()] == [first.id]
    store.mark_certified([first.id], "rev", "2", None)
    done = store.get(first.id)
    assert (done.state, done.dataset_rev, done.model_version, done.error) == ("certified", "rev", "2", None)
    assert store.pending() == [] and done.open and done.days_left() in (29, 30)
    store.mark_forgotten([first.id], "3")
    closed = store.get(first.id)
    assert (closed.state, closed.champion_version, closed.open, closed.days_left()) == ("forgotten", "3", False, None)


def test_locate_by_each_exact_key(fresh_workspace):
    import pandas as pd

    manifest = pd.read_parquet(fresh_workspace.data_dir / "manifest.parquet")
    row = manifest.iloc[3]
    subject_rows = set(manifest.loc[manifest.subject_id == row.subject_id, "sample_id"])
    located = locate(DeletionRequest(subject_ids=[row.subject_id]), manifest)
    assert located.sample_ids == subject_rows and set(located.found_by.values()) == {"subject_id"}
    by_hash = locate(DeletionRequest(content_sha256=[row.content_sha256]), manifest)
    assert row.sample_id in by_hash.sample_ids
    with pytest.raises(RequestRejected, match="unknown subject id: nobody"):
        check_request(DeletionRequest(subject_ids=[row.subject_id, "nobody"]), manifest)


def test_unknown_subject_changes_nothing(fresh_workspace):
    with pytest.raises(RequestRejected, match="unknown sample id"):
        submit(fresh_workspace, {"sample_ids": ["mnist-99999"]})
    assert RequestStore(fresh_workspace.requests_db).list() == []


def test_keyed_hash_is_keyed():
    assert keyed_hash(b"k1", "alice") != keyed_hash(b"k2", "alice")
    assert "alice" not in keyed_hash(b"k1", "alice")


# -- rejected state ----------------------------------------------------------------------------------------


def test_rejection_is_final_needs_a_reason_and_only_applies_to_waiting_requests(tmp_path):
    from unlearnops.requests import TransitionRefused

    store = RequestStore(tmp_path / "requests.db")
    waiting, _ = store.add(DeletionRequest(subject_ids=["s1"]))
    done, _ = store.add(DeletionRequest(subject_ids=["s2"]))
    store.mark_certified([done.id], "rev", "2", None)
    with pytest.raises(TransitionRefused, match="reason"):
        store.mark_rejected(waiting.id, "  ")
    rejected = store.mark_rejected(waiting.id, "duplicate of a ticket handled by hand")
    assert (rejected.state, rejected.rejection_reason) == ("rejected", "duplicate of a ticket handled by hand")
    assert store.mark_rejected(waiting.id, "another reason").rejection_reason == rejected.rejection_reason
    assert store.pending() == []
    store.mark_failed([waiting.id], "late failure")  # a final state is never left
    store.mark_certified([waiting.id], "rev", "3", None)
    assert RequestStore(tmp_path / "requests.db").get(waiting.id).state == "rejected"
    with pytest.raises(TransitionRefused, match="is certified"):
        store.mark_rejected(done.id, "too late")
    with pytest.raises(KeyError):
        store.mark_rejected("req-nope", "x")


def test_a_store_from_before_the_rejected_state_is_upgraded(tmp_path):
    import sqlite3

    path = tmp_path / "requests.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE requests (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
        " state TEXT NOT NULL, request_json TEXT NOT NULL, idempotency_key TEXT UNIQUE,"
        " located_json TEXT NOT NULL DEFAULT '[]', dataset_rev TEXT, model_version TEXT, error TEXT,"
        " attempts INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO requests (id, created_at, updated_at, state, request_json) VALUES"
        " ('req-old', 't', 't', 'received', '{\"subject_ids\": [\"a\"]}');"
    )
    db.commit()
    db.close()
    store = RequestStore(path)
    assert store.get("req-old").rejection_reason is None
    assert store.mark_rejected("req-old", "upgraded").state == "rejected"


def _remove_subject(ws, subject: str) -> None:
    """Samples vanish without a deletion request (say, the dataset was edited by hand)."""
    from unlearnops import data

    dataset = data.load_dataset(ws.data_dir, mmap=False)
    data.save_dataset(ws.data_dir, dataset.select(dataset.manifest["subject_id"] != subject))


def test_the_flow_rejects_vanished_targets_and_closes_already_deleted_ones(fresh_workspace):
    import pandas as pd

    from unlearnops.flow.batch import NothingToDo
    from unlearnops.flow.locate import batch_waiting, locate as locate_pending

    ws = fresh_workspace
    subjects = sorted(pd.read_parquet(ws.data_dir / "manifest.parquet").subject_id.unique())
    vanished, _ = submit(ws, {"subject_ids": [subjects[0]]})
    # An earlier request deleted subject 1 (certified); a later one for the same subject was stored while
    # the samples were still there (say, while the earlier batch ran).
    store = RequestStore(ws.requests_db)
    earlier, _ = submit(ws, {"subject_ids": [subjects[1]]})
    store.mark_certified([earlier.id], "rev-1", "2", None)
    later, created = store.add(DeletionRequest(subject_ids=[subjects[1]], reason="asked twice"))
    assert created
    _remove_subject(ws, subjects[0])
    _remove_subject(ws, subjects[1])

    assert batch_waiting(ws)  # what `unlearnops run` asks before importing the batch's stack ahead
    with pytest.raises(NothingToDo):
        locate_pending(ws)
    assert not batch_waiting(ws) and not batch_waiting(ws, "retrain")
    gone = store.get(vanished.id)
    assert gone.state == "rejected" and f"unknown subject id: {subjects[0]}" in gone.rejection_reason
    again = store.get(later.id)
    assert (again.state, again.resolved_by, again.dataset_rev, again.model_version) == (
        "certified", earlier.id, "rev-1", "2")
    # Raw subject ids are gone once settled: only keyed hashes remain.
    assert all(s.startswith("hmac:") for r in (gone, again) for s in r.request.subject_ids)
    assert store.pending() == []
    # A rejected request covers nothing: the same subject can be asked for again (and is refused only
    # because its samples are gone and nobody deleted them).
    with pytest.raises(RequestRejected, match="unknown subject id"):
        submit(ws, {"subject_ids": [subjects[0]]})


def test_operator_rejects_a_waiting_request_from_the_cli(fresh_workspace):
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from unlearnops.cli import app
    from unlearnops.flow.batch import Batch

    runner = CliRunner()
    ws = fresh_workspace
    root = str(ws.root)
    subjects = sorted(pd.read_parquet(ws.data_dir / "manifest.parquet").subject_id.unique())
    first, _ = submit(ws, {"subject_ids": [subjects[0]]})
    second, _ = submit(ws, {"subject_ids": [subjects[1]]})

    result = runner.invoke(app, ["request", "reject", first.id, "--reason", "identity not verified",
                                 "--workspace", root, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(runner.invoke(app, ["request", "show", first.id, "--workspace", root, "--json"]).stdout)
    assert (shown["state"], shown["rejection_reason"]) == ("rejected", "identity not verified")
    assert [r.id for r in RequestStore(ws.requests_db).pending()] == [second.id]

    unknown = runner.invoke(app, ["request", "reject", "req-000000000000", "--reason", "x", "--workspace", root,
                                  "--json"])
    assert unknown.exit_code == 1 and "no request" in json.loads(unknown.stdout)["error"]
    no_reason = runner.invoke(app, ["request", "reject", second.id, "--reason", "", "--workspace", root, "--json"])
    assert no_reason.exit_code == 1 and RequestStore(ws.requests_db).get(second.id).state == "received"

    # A request inside an unfinished batch (its samples may be cut already) cannot be rejected.
    batch = Batch(run_id="20260101T000000-abcdef", created_at="2026-01-01T00:00:00+00:00",
                  request_ids=[second.id], forget_ids=[], forget_hashes=[], subject_hashes=[], parent_version="1",
                  ladder=["slug"], method="slug", dataset_before={"git_rev": "x", "dvc_md5": "y", "n_samples": 1},
                  completed=["locate"])
    batch.save(ws)
    in_batch = runner.invoke(app, ["request", "reject", second.id, "--reason", "x", "--workspace", root, "--json"])
    assert in_batch.exit_code == 1 and "unfinished batch" in json.loads(in_batch.stdout)["error"]

    RequestStore(ws.requests_db).mark_certified([second.id], "rev", "2", None)
    batch.completed.append("finalize")
    batch.save(ws)
    processed = runner.invoke(app, ["request", "reject", second.id, "--reason", "x", "--workspace", root, "--json"])
    assert processed.exit_code == 1 and "is certified" in json.loads(processed.stdout)["error"]
