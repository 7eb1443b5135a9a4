"""Property-based tests of the request schema and intake: generated bad inputs (well over 1000 in all) are
each refused with RequestRejected — never another exception — and nothing is stored; generated valid
requests round-trip through the store unchanged."""

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unlearnops.intake import import_directory, parse_request, submit
from unlearnops.requests import ID_PATTERN, DeletionRequest, RequestRejected, RequestStore

FIELDS = ("subject_ids", "sample_ids", "content_sha256")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
bad_ids = st.text(max_size=200).filter(lambda s: not re.fullmatch(ID_PATTERN, s.strip()))
bad_hashes = st.text(max_size=80).filter(lambda s: not re.fullmatch(r"[0-9a-fA-F]{64}", s.strip()))
good_ids = st.from_regex(ID_PATTERN, fullmatch=True)


@st.composite
def bad_payloads(draw):
    """A payload that is wrong by construction, in one of several ways."""
    kind = draw(st.sampled_from(["not-an-object", "unknown-field", "bad-id", "bad-hash", "empty", "wrong-type",
                                 "bad-reason", "bad-key"]))
    if kind == "not-an-object":
        return draw(json_values.filter(lambda v: not isinstance(v, dict)))
    payload = {"subject_ids": [draw(good_ids)]}
    if kind == "unknown-field":
        payload[draw(st.text(min_size=1).filter(lambda k: k not in DeletionRequest.model_fields))] = \
            draw(json_values)
    elif kind == "bad-id":
        payload[draw(st.sampled_from(FIELDS[:2]))] = [*draw(st.lists(good_ids, max_size=3)), draw(bad_ids)]
    elif kind == "bad-hash":
        payload["content_sha256"] = [draw(bad_hashes)]
    elif kind == "empty":
        payload = {f: [] for f in draw(st.lists(st.sampled_from(FIELDS), unique=True))}
    elif kind == "wrong-type":
        payload[draw(st.sampled_from(FIELDS))] = draw(
            json_values.filter(lambda v: not isinstance(v, list) or any(not isinstance(x, str) for x in v)
                               and len(v) > 0))
    elif kind == "bad-reason":
        payload["reason"] = draw(st.just("") | st.text(min_size=501, max_size=600) | st.integers() | st.none())
    else:
        payload["idempotency_key"] = draw(bad_ids.filter(lambda s: s != "") | st.integers())
    return payload


@settings(max_examples=1200, deadline=None)
@given(bad_payloads())
def test_the_schema_refuses_every_bad_payload(payload):
    with pytest.raises(RequestRejected):
        parse_request(payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=bad_payloads() | st.fixed_dictionaries({f: st.lists(good_ids, min_size=1, max_size=3)
                                                       for f in FIELDS[:2]}))
def test_intake_refuses_bad_or_unknown_requests_and_stores_nothing(fresh_workspace, payload):
    # Random well-formed ids name nothing in the dataset: they are refused as unknown.
    with pytest.raises(RequestRejected):
        submit(fresh_workspace, payload)
    assert RequestStore(fresh_workspace.requests_db).list() == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300) | bad_payloads().map(lambda p: json.dumps(p).encode()),
       suffix=st.sampled_from([".json", ".csv"]))
def test_drop_files_with_bad_content_are_rejected_whole(fresh_workspace, tmp_path_factory, content, suffix):
    inbox = tmp_path_factory.mktemp("inbox")
    (inbox / f"r{suffix}").write_bytes(content)
    [result] = import_directory(fresh_workspace, inbox)
    assert result["status"] == "rejected" and result["reason"]
    assert (inbox / "rejected" / f"r{suffix}.reason.txt").is_file()
    assert RequestStore(fresh_workspace.requests_db).list() == []


@settings(max_examples=200, deadline=None)
@given(subjects=st.lists(good_ids, min_size=1, max_size=5),
       reason=st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=500)
       .filter(lambda r: r.strip() != ""))
def test_valid_requests_round_trip_through_the_store(tmp_path_factory, subjects, reason):
    store = RequestStore(tmp_path_factory.mktemp("store") / "requests.db")
    request = parse_request({"subject_ids": subjects, "reason": reason})
    stored, created = store.add(request)
    assert created and store.get(stored.id).request == request
    assert set(request.subject_ids) == {s.strip() for s in subjects}


# -- malformed bodies over HTTP and in the drop directory: always a 4xx / a rejection, never a 5xx or a crash --
def _nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


malformed_bodies = st.one_of(
    st.binary(max_size=300),                                                        # arbitrary bytes
    st.integers(65, 3000).map(_nested),                                             # deep nesting
    st.integers(65, 2000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
    st.integers(4301, 6000).map(lambda n: b'{"subject_ids": [' + b"7" * n + b"]}"),  # huge integers
    st.sampled_from([b"1e400", b"-1e999", b"NaN", b"Infinity", b"-Infinity"]).map(
        lambda n: b'{"subject_ids": [' + n + b"], \"inputs\": [" + n + b"]}"),
    st.builds(lambda bom, p: bom + p, st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"]),
              bad_payloads().map(lambda p: json.dumps(p).encode())),               # byte order marks
    st.text(max_size=60).map(lambda t: t.encode("utf-16")),                         # other encodings
    st.text(min_size=1, max_size=60).map(lambda t: t.encode("latin-1", "replace") + b"\xe9"),
    bad_payloads().map(lambda p: json.dumps(p).encode()),                           # well-formed, invalid
    json_values.map(lambda v: json.dumps(v).encode()),
)

INTAKE_TOKEN = "intake-fuzz-token-0123456789abcdef"


@pytest.fixture(scope="module")
def intake_workspace(tmp_path_factory):
    from conftest import make_workspace

    return make_workspace(tmp_path_factory.mktemp("fuzz-intake") / "ws", limit=300, epochs=1)


@pytest.fixture(scope="module")
def intake_client(intake_workspace):
    """The intake app in process (ASGI test client: no server per example)."""
    from fastapi.testclient import TestClient

    from unlearnops.service import create_app

    return TestClient(create_app(intake_workspace, INTAKE_TOKEN), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def serve_client(serving_app):
    from fastapi.testclient import TestClient

    return TestClient(serving_app, raise_server_exceptions=False)


@settings(max_examples=1100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=malformed_bodies)
def test_intake_http_answers_every_malformed_body_with_a_4xx_and_stores_nothing(intake_workspace, intake_client,
                                                                                body):
    answer = intake_client.post("/requests", content=body, headers={"Authorization": f"bearer {INTAKE_TOKEN}"})
    assert 400 <= answer.status_code < 500 and answer.json()["error"], (body[:60], answer.status_code)
    assert RequestStore(intake_workspace.requests_db).list() == []


@settings(max_examples=1100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=malformed_bodies | st.builds(lambda batch: json.dumps({"inputs": batch}).encode(), json_values))
def test_serve_answers_every_malformed_body_with_a_4xx(serving_app, serve_client, body):
    loaded = serving_app.state.server.current
    answer = serve_client.post("/predict", content=body,
                                headers={"Authorization": f"Bearer {serving_app.state.token}"})
    assert 400 <= answer.status_code < 500 and answer.json()["detail"], (body[:60], answer.status_code)
    assert serving_app.state.server.current is loaded


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=malformed_bodies, suffix=st.sampled_from([".json", ".csv"]))
def test_import_rejects_every_malformed_file_alone_and_stores_nothing(intake_workspace, tmp_path_factory, content,
                                                                      suffix):
    inbox = tmp_path_factory.mktemp("inbox")
    (inbox / f"a{suffix}").write_bytes(content)
    [result] = import_directory(intake_workspace, inbox)
    assert result["status"] == "rejected" and result["reason"]
    assert sorted(p.name for p in inbox.iterdir()) == ["rejected"]
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == [f"a{suffix}", f"a{suffix}.reason.txt"]
    assert RequestStore(intake_workspace.requests_db).list() == []
