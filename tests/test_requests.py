import pytest

from unlearnops.intake import parse_request, submit
from unlearnops.locate import check_request, locate
from unlearnops.requests import DeletionRequest, RequestRejected, RequestStore, keyed_hash


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
    again, created = store.add(DeletionRequest(subject_ids=["s2"], idempotency_key="k-1"))
    assert not created and again.id == first.id and again.request.subject_ids == ["s1"]

    store.mark_located({first.id: ["x2", "x1"]})
    assert store.get(first.id).located_sample_ids == ["x1", "x2"]
    store.mark_failed([first.id], "boom")
    failed = RequestStore(tmp_path / "requests.db").get(first.id)  # a new handle: state is durable
    assert failed.state == "failed" and failed.attempts == 1 and [r.id for r in store.pending()] == [first.id]
    store.mark_processed([first.id], "rev", "2")
    done = store.get(first.id)
    assert (done.state, done.dataset_rev, done.model_version, done.error) == ("processed", "rev", "2", None)
    assert store.pending() == []


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
