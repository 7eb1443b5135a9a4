"""Intake channels: the drop directory, the HTTP endpoint (a real uvicorn server on 127.0.0.1) and
`request show`; every channel validates with the one schema and stores nothing it refuses."""

import json
import threading
import time

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from unlearnops.cli import app
from unlearnops.intake import MAX_FILE_BYTES, import_directory
from unlearnops.requests import RequestRejected, RequestStore

runner = CliRunner()


def subjects(ws, n):
    manifest = pd.read_parquet(ws.data_dir / "manifest.parquet")
    return sorted(manifest.subject_id.astype(str).unique())[:n]


def test_drop_directory_all_or_nothing_per_file(fresh_workspace, tmp_path):
    ws = fresh_workspace
    s = subjects(ws, 4)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.json").write_text(json.dumps([{"subject_ids": [s[0]]}, {"subject_ids": [s[1]], "reason": "gdpr"}]))
    (inbox / "b.csv").write_text(f"subject_ids,reason\n{s[2]};{s[3]},art. 17\n")
    (inbox / "mixed.json").write_text(json.dumps([{"subject_ids": [s[0]]}, {"subject_ids": ["nobody-42"]}]))
    (inbox / "broken.json").write_text('{"subject_ids": [')
    (inbox / "cols.csv").write_text("subject,colour\nx,red\n")
    (inbox / "latin1.csv").write_bytes("subject_ids\n\xe9\n".encode("latin-1"))
    (inbox / "huge.json").write_text(json.dumps({"subject_ids": [s[0]], "reason": "x" * MAX_FILE_BYTES}))
    (inbox / "ünï côde.json").write_text(json.dumps({"sample_ids": ["bad id\u202e"]}))
    (inbox / ".writing.json").write_text("{")  # not renamed into place yet: skipped
    (inbox / "notes.txt").write_text("ignored")

    results = {r["file"]: r for r in import_directory(ws, inbox)}
    assert {f for f, r in results.items() if r["status"] == "done"} == {"a.json", "b.csv"}
    reasons = {f: r["reason"] for f, r in results.items() if r["status"] == "rejected"}
    assert "unknown subject id: nobody-42" in reasons["mixed.json"] and "request 1" in reasons["mixed.json"]
    assert "malformed JSON" in reasons["broken.json"]
    assert "CSV columns" in reasons["cols.csv"] and "colour" not in reasons["cols.csv"]
    assert "not UTF-8" in reasons["latin1.csv"]
    assert "larger than" in reasons["huge.json"]
    assert "malformed id" in reasons["ünï côde.json"]
    assert sorted(p.name for p in inbox.iterdir()) == [".writing.json", "done", "notes.txt", "rejected"]
    assert (inbox / "rejected" / "mixed.json.reason.txt").read_text().strip() == reasons["mixed.json"]
    receipts = json.loads((inbox / "done" / "a.json.receipts.json").read_text())
    stored = RequestStore(ws.requests_db).list()
    assert len(stored) == 3 and {r["id"] for r in receipts} <= {r.id for r in stored}
    from_csv = [r.request for r in stored if s[2] in r.request.subject_ids]
    assert [(r.subject_ids, r.reason) for r in from_csv] == [(sorted([s[2], s[3]]), "art. 17")]

    # The same file dropped again (say, the importer crashed before moving it) stores nothing twice.
    (inbox / "a.json").write_bytes((inbox / "done" / "a.json").read_bytes())
    again = import_directory(ws, inbox)
    assert [r["status"] for r in again] == ["done"]
    assert [r["created"] for r in again[0]["receipts"]] == [False, False]
    assert [r["id"] for r in again[0]["receipts"]] == [r["id"] for r in receipts]
    assert len(RequestStore(ws.requests_db).list()) == 3


def test_import_never_follows_links_nor_echoes_and_one_bad_file_blocks_nothing(fresh_workspace, tmp_path):
    ws = fresh_workspace
    s = subjects(ws, 2)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "valid.json").write_text(json.dumps({"subject_ids": [s[1]]}))
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in outside.iterdir()}
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a-deep.json").write_text("[" * 100_000 + "]" * 100_000)  # crashed the command and blocked the rest
    (inbox / "b-link.csv").symlink_to(secret)
    (inbox / "c-link.json").symlink_to(outside / "valid.json")  # valid content, but a link: refused
    (inbox / "d-dangling.json").symlink_to(tmp_path / "nowhere.json")
    (inbox / "e-dirlink.json").symlink_to(outside, target_is_directory=True)
    (inbox / "f-bom.csv").write_bytes(b"\xef\xbb\xbfsubject_ids\n" + s[0].encode() + b"\n")  # Excel's UTF-8 CSV
    results = {r["file"]: r for r in import_directory(ws, inbox)}
    assert {f: r["status"] for f, r in results.items()} == {
        "a-deep.json": "rejected", "b-link.csv": "rejected", "c-link.json": "rejected", "d-dangling.json": "rejected",
        "e-dirlink.json": "rejected", "f-bom.csv": "done"}
    assert "nested deeper" in results["a-deep.json"]["reason"]
    assert all("symbolic link" in results[f]["reason"] for f in ("b-link.csv", "c-link.json", "d-dangling.json"))
    assert not any("root" in r.get("reason", "") for r in results.values())
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in outside.iterdir()} == before
    assert (inbox / "rejected" / "b-link.csv").is_symlink()  # the link moved, its target untouched
    assert [r.request.subject_ids for r in RequestStore(ws.requests_db).list()] == [[s[0]]]

    # done/ planted as a link out of the drop directory: refused before anything moves.
    planted = tmp_path / "inbox2"
    planted.mkdir()
    (planted / "done").symlink_to(outside, target_is_directory=True)
    (planted / "r.json").write_text(json.dumps({"subject_ids": [s[1]]}))
    with pytest.raises(RequestRejected, match="not a link"):
        import_directory(ws, planted)
    assert (planted / "r.json").is_file() and sorted(p.name for p in outside.iterdir()) == sorted(before)


def test_cli_import_and_show(fresh_workspace, tmp_path):
    ws = str(fresh_workspace.root)
    inbox = tmp_path / "drop"
    inbox.mkdir()
    (inbox / "r.json").write_text(json.dumps({"subject_ids": subjects(fresh_workspace, 1)}))
    result = runner.invoke(app, ["request", "import", str(inbox), "--workspace", ws, "--json"])
    assert result.exit_code == 0, result.output
    request_id = json.loads(result.stdout)[0]["receipts"][0]["id"]
    shown = json.loads(runner.invoke(app, ["request", "show", request_id, "--workspace", ws, "--json"]).stdout)
    assert shown["id"] == request_id and shown["state"] == "received" and shown["attempts"] == 0
    missing = runner.invoke(app, ["request", "show", "req-000000000000", "--workspace", ws, "--json"])
    assert missing.exit_code == 1 and "no request" in json.loads(missing.stdout)["error"]
    (inbox / "bad.csv").write_text("subject_ids\nnobody\n")
    refused = runner.invoke(app, ["request", "import", str(inbox), "--workspace", ws, "--json"])
    assert refused.exit_code == 1 and json.loads(refused.stdout)[0]["status"] == "rejected"


def serve_intake(ws, token: str):
    """The intake app of ``ws`` on a real uvicorn server on a free loopback port, in a thread; returns
    ``(server, thread, url)`` (stop: ``server.should_exit = True; thread.join()``)."""
    import uvicorn

    from unlearnops.servers import free_port
    from unlearnops.service import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(ws, token), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    return server, thread, f"http://127.0.0.1:{server.config.port}"


@pytest.fixture
def intake_server(fresh_workspace):
    """The intake app served by a real uvicorn server on a free port of 127.0.0.1."""
    token = "t" * 8 + "0123456789abcdef"
    server, thread, url = serve_intake(fresh_workspace, token)
    yield fresh_workspace, url, token
    server.should_exit = True
    thread.join(10)


def test_http_intake_with_token_auth(intake_server):
    ws, url, token = intake_server
    auth = {"Authorization": f"Bearer {token}"}
    subject = subjects(ws, 1)[0]
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.post("/requests", json={"subject_ids": [subject]}).status_code == 401
        wrong = http.post("/requests", json={"subject_ids": [subject]}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"

        created = http.post("/requests", json={"subject_ids": [subject], "idempotency_key": "h-1"}, headers=auth)
        assert created.status_code == 201 and created.json()["created"] is True
        again = http.post("/requests", json={"subject_ids": [subject], "idempotency_key": "h-1"}, headers=auth)
        assert again.status_code == 200 and again.json()["id"] == created.json()["id"]

        lower = http.post("/requests", json={"subject_ids": [subject], "idempotency_key": "h-1"},
                          headers={"Authorization": f"bearer {token}"})  # RFC 7235: the scheme is case-insensitive
        assert lower.status_code == 200 and lower.json()["id"] == created.json()["id"]

        for body, fragment in ((b'{"subject_ids": [', "malformed JSON"), (b"\xff\xfe", "byte order mark"),
                               (b"\xc3\x28{}", "not UTF-8"), (b'\xef\xbb\xbf{"subject_ids": ["a"]}', "byte order mark"),
                               (b"[" * 5000 + b"]" * 5000, "nested deeper"), (b'{"a": ' * 50000, "nested deeper"),
                               (b'{"subject_ids": [' + b"9" * 5000 + b"]}", "malformed JSON"),
                               (b'{"subject_ids": [1e999]}', "out of range"), (b'{"subject_ids": [NaN]}', "NaN"),
                               (b"[1, 2]", "JSON object"), (b'{"subject_ids": ["nobody-7"]}', "unknown subject"),
                               (b'{"subject_ids": ["a\\u0000b"]}', "malformed id")):
            refused = http.post("/requests", content=body, headers={**auth, "Content-Type": "application/json"})
            assert refused.status_code == 422 and fragment in refused.json()["error"], body
        huge = http.post("/requests", content=b" " * (2 << 20), headers=auth)
        assert huge.status_code == 413 and "Content-Length" in huge.json()["error"]

        def chunks():  # no Content-Length: the server counts the bytes as they arrive
            for _ in range(64):
                yield b" " * (64 << 10)

        streamed = http.post("/requests", content=chunks(), headers=auth)
        assert streamed.status_code == 413 and "larger than" in streamed.json()["error"]

        shown = http.get(f"/requests/{created.json()['id']}", headers=auth)
        assert shown.status_code == 200 and shown.json()["request"]["subject_ids"] == [subject]
        assert http.get(f"/requests/{created.json()['id']}").status_code == 401
        assert http.get("/requests/req-ffffffffffff", headers=auth).status_code == 404
        assert http.get("/requests/..%2F..%2Fetc", headers=auth).status_code == 404
    assert [r.id for r in RequestStore(ws.requests_db).list()] == [created.json()["id"]]
