"""Request intake: one path for every channel (CLI, Python API, drop directory, HTTP).

Every channel validates with the same schema (:func:`parse_request`), checks the request against the
current dataset and stores it through :func:`submit`; refused input stores nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from unlearnops import data as data_module
from unlearnops.locate import check_request, locate, read_manifest
from unlearnops.keys import keyed_hash, subject_key
from unlearnops.requests import (HASHED_PREFIX, OPEN_STATES, DeletionRequest, IdempotencyConflict, RequestRejected,
                                 RequestStore, StoredRequest, targets)
from unlearnops.workspace import Workspace

MAX_FILE_BYTES = 1 << 20
MAX_REQUESTS_PER_FILE = 1000
MAX_JSON_DEPTH = 64
CSV_COLUMNS = ("subject_ids", "sample_ids", "content_sha256", "reason", "idempotency_key", "policy")


def parse_request(payload: Any) -> DeletionRequest:
    """Validate a request payload; a :class:`RequestRejected` says what is wrong, field by field."""
    if isinstance(payload, DeletionRequest):
        return payload
    if not isinstance(payload, dict):
        raise RequestRejected(f"a request is a JSON object, not {type(payload).__name__}")
    try:
        return DeletionRequest.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise RequestRejected(problems) from None


def receipt(stored: StoredRequest, created: bool) -> dict[str, Any]:
    """What the submitter gets back: the request id, its state, whether this call stored it, its due date
    and the days left."""
    return {"id": stored.id, "state": stored.state, "created": created, "received_at": stored.created_at,
            "due_at": stored.due_at, "days_left": stored.days_left()}


def hashed_subjects(subject_ids, key: bytes | None) -> set[str]:
    """Subject ids in the form the store keeps after locate (``hmac:<keyed hash>``; already hashed ones as
    they are); the ids unchanged without a key."""
    if key is None:
        return set(subject_ids)
    return {s if s.startswith(HASHED_PREFIX) else HASHED_PREFIX + keyed_hash(key, s) for s in subject_ids}


def already_deleted(request: DeletionRequest, store: RequestStore, states: tuple[str, ...] | None = None,
                    exclude: str | None = None, key: bytes | None = None) -> StoredRequest | None:
    """The earliest stored request (in ``states``; default: any but rejected; never ``exclude``) that
    overlaps ``request`` when such requests together cover every one of its targets, else None (some
    target was never asked for). With the subject ``key``, subjects compare by keyed hash."""
    earlier = [r for r in store.list(states) if r.state != "rejected" and r.id != exclude]
    wanted_subjects = hashed_subjects(request.subject_ids, key)
    covered: dict[str, set[str]] = {"subject_ids": set(), "sample_ids": set(), "content_sha256": set()}
    for r in earlier:
        covered["subject_ids"] |= hashed_subjects(r.request.subject_ids, key)
        covered["sample_ids"] |= set(r.request.sample_ids) | set(r.located_sample_ids)
        covered["content_sha256"] |= set(r.request.content_sha256)
    for field_name, wanted in (("subject_ids", wanted_subjects), ("sample_ids", request.sample_ids),
                               ("content_sha256", request.content_sha256)):
        if not set(wanted) <= covered[field_name]:
            return None
    for r in earlier:
        if (wanted_subjects & hashed_subjects(r.request.subject_ids, key)
                or set(request.sample_ids) & (set(r.request.sample_ids) | set(r.located_sample_ids))
                or set(request.content_sha256) & set(r.request.content_sha256)):
            return r
    return None


def same_targets(stored: StoredRequest, request: DeletionRequest, key: bytes | None) -> bool:
    """Whether ``request`` names exactly what ``stored`` names (subjects by keyed hash), with the same policy."""
    return (targets(stored.request, sorted(hashed_subjects(stored.request.subject_ids, key)))
            == targets(request, sorted(hashed_subjects(request.subject_ids, key))))


def submit(ws: Workspace, payload: Any) -> tuple[StoredRequest, bool]:
    """Validate, check against the current dataset, and store. Returns (stored request, newly created).

    A repeated idempotency key with the same request returns the stored one; with a different request it is
    an :class:`~unlearnops.requests.IdempotencyConflict` (nothing stored). A request with exactly the targets
    of an open one, or whose every target is already deleted or awaiting deletion under an earlier request,
    is an idempotent no-op that returns that earlier request."""
    request = parse_request(payload)
    store = RequestStore(ws.requests_db)
    key = subject_key(ws)
    if request.idempotency_key:
        existing = store.by_idempotency_key(request.idempotency_key)
        if existing is not None:
            if not same_targets(existing, request, key) or existing.request.reason != request.reason:
                raise IdempotencyConflict(
                    f"idempotency key {request.idempotency_key!r} was used for request {existing.id} with "
                    "different targets or options; use a new key for a new request")
            return existing, False
    else:
        for stored in store.list(OPEN_STATES):
            if same_targets(stored, request, key):
                return stored, False
    manifest = read_manifest(ws.data_dir / data_module.MANIFEST_FILE, ["sample_id", "subject_id", "content_sha256"])
    try:
        check_request(request, manifest)
    except RequestRejected:
        earlier = already_deleted(request, store, key=key)
        if earlier is None:
            raise
        if not locate(request, manifest).sample_ids:
            return earlier, False
    return store.add(request, ws.settings.requests.due_days,
                     same=lambda stored, new: same_targets(stored, new, key) and stored.request.reason == new.reason)


def _depth(value: Any) -> int:
    """How deeply arrays/objects nest in a parsed JSON value (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node)
                         if isinstance(child, (list, dict)))
    return deepest


def strict_json(data: bytes, max_depth: int = MAX_JSON_DEPTH, bom_ok: bool = False) -> Any:
    """Parse UTF-8 JSON strictly; :class:`RequestRejected` with a reason (never the content) for a byte order
    mark (unless ``bom_ok``: a leading UTF-8 BOM is skipped), bytes that are not UTF-8, malformed JSON,
    ``NaN``/``Infinity``, numbers out of range, integers longer than Python converts, or nesting deeper than
    ``max_depth``."""
    if bom_ok and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise RequestRejected("starts with a byte order mark: send UTF-8 JSON without one")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejected(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None

    def no_constant(name: str):
        raise ValueError(f"{name} is not JSON")

    def finite(literal: str) -> float:
        value = float(literal)
        if value in (float("inf"), float("-inf")):
            raise ValueError("number out of range")
        return value

    def _reason(exc: ValueError) -> str:  # position only: never echo the content
        if isinstance(exc, json.JSONDecodeError):
            return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        return str(exc)[:120]

    try:
        value = json.loads(text, parse_constant=no_constant, parse_float=finite)
    except RecursionError:  # the C decoder guards its recursion: deep nesting fails cleanly here
        raise RequestRejected(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, our own refusals, and int() beyond sys.get_int_max_str_digits
        raise RequestRejected(f"malformed JSON ({_reason(exc)})") from None
    if _depth(value) > max_depth:
        raise RequestRejected(f"JSON nested deeper than {max_depth} levels")
    return value


# -- drop directory -------------------------------------------------------------------------------------


def _split_cell(cell: str | None) -> list[str]:
    return [v for v in re.split(r"[;\s]+", cell or "") if v]


def read_request_file(path: Path) -> list[dict[str, Any]]:
    """The request payloads of one drop file: JSON (an object or a list of objects) or CSV (one request
    per row; columns among :data:`CSV_COLUMNS`, several ids in a cell separated by ``;`` or spaces).
    A symbolic link is never followed (:class:`RequestRejected`)."""
    return parse_request_bytes(_read_regular_file(Path(path)), Path(path).suffix)


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file with no other hard link, opened without following a
    symbolic link; :class:`RequestRejected` otherwise (the reason never quotes the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if path.is_symlink():
            raise RequestRejected("a symbolic link: links are not followed, drop the file itself") from None
        raise RequestRejected(f"cannot open the file ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RequestRejected("not a regular file")
        if info.st_nlink > 1:
            raise RequestRejected("the file has other hard links: drop a copy")
        if info.st_size > MAX_FILE_BYTES:
            raise RequestRejected(f"file larger than {MAX_FILE_BYTES} bytes ({info.st_size})")
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise RequestRejected(f"file larger than {MAX_FILE_BYTES} bytes")
    return data


def parse_request_bytes(data: bytes, suffix: str) -> list[dict[str, Any]]:
    """The request payloads in the bytes of a ``.json`` or ``.csv`` drop file (see
    :func:`read_request_file`); a leading UTF-8 byte order mark is skipped. Refusal reasons give positions,
    never the file's text."""
    if suffix.lower() == ".json":
        content = strict_json(data, bom_ok=True)
        payloads = content if isinstance(content, list) else [content]
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RequestRejected(f"file is not UTF-8 ({exc.reason} at byte {exc.start})") from None
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
            fields = reader.fieldnames or []
            unknown = [i + 1 for i, name in enumerate(fields) if name not in CSV_COLUMNS]
            if unknown or not fields:
                raise RequestRejected(f"CSV columns must be among {', '.join(CSV_COLUMNS)}; "
                                      + (f"unknown column(s) at position {', '.join(map(str, unknown[:10]))}"
                                         if unknown else "no header line"))
            payloads = []
            for row in reader:
                if None in row:
                    raise RequestRejected(f"CSV line {reader.line_num} has more cells than columns")
                payload: dict[str, Any] = {k: _split_cell(row.get(k)) for k in CSV_COLUMNS[:3]}
                for key in ("reason", "idempotency_key", "policy"):
                    if (row.get(key) or "").strip():
                        payload[key] = row[key]
                payloads.append(payload)
                if len(payloads) > MAX_REQUESTS_PER_FILE:
                    break
        except csv.Error as exc:
            raise RequestRejected(f"malformed CSV at line {reader.line_num}: {str(exc).split(':')[0][:80]}") from None
    if not payloads:
        raise RequestRejected("the file holds no request")
    if len(payloads) > MAX_REQUESTS_PER_FILE:
        raise RequestRejected(f"more than {MAX_REQUESTS_PER_FILE} requests in one file")
    return payloads


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}-{path.name}"
    path.replace(target)
    return target


def _import_one(ws: Workspace, path: Path) -> list[dict[str, Any]]:
    """Store every request of one drop file (all or nothing) and return the receipts."""
    data = _read_regular_file(path)
    payloads = parse_request_bytes(data, path.suffix)
    digest = hashlib.sha256(data).hexdigest()[:16]
    requests = []
    for i, payload in enumerate(payloads):
        if isinstance(payload, dict) and not payload.get("idempotency_key"):
            payload = {**payload, "idempotency_key": f"file-{digest}-{i}"}
        try:
            requests.append(parse_request(payload))
        except RequestRejected as exc:
            raise RequestRejected(f"request {i}: {exc}") from None
    manifest = read_manifest(ws.data_dir / data_module.MANIFEST_FILE, ["sample_id", "subject_id", "content_sha256"])
    store = RequestStore(ws.requests_db)
    key = subject_key(ws)
    for i, request in enumerate(requests):
        if store.by_idempotency_key(request.idempotency_key) is None:
            try:
                check_request(request, manifest)
            except RequestRejected as exc:
                if already_deleted(request, store, key=key) is None:
                    raise RequestRejected(f"request {i}: {exc}") from None
    return [receipt(*submit(ws, request)) for request in requests]


def import_directory(ws: Workspace, directory: Path) -> list[dict[str, Any]]:
    """Take in every ``*.json`` and ``*.csv`` entry of a drop directory (names starting with ``.`` are
    skipped: write there, then rename). A file is all or nothing: every request in it is valid and stored,
    and the file moves to ``done/`` with ``<name>.receipts.json``; or nothing of it is stored and it moves to
    ``rejected/`` with ``<name>.reason.txt``. Requests without an idempotency key get one derived from the
    file's content, so importing a file again (say, after a crash) stores nothing twice.

    Symbolic links are never followed (the link itself moves to ``rejected/``), ``done/`` and ``rejected/``
    must be real directories inside the drop directory, a reason never quotes the file's text, and one bad
    file never blocks the others: whatever goes wrong with one file is reported for it (``rejected``, or
    ``error`` when it could not even be moved) and the import goes on."""
    directory = Path(directory)
    for name in ("done", "rejected"):
        folder = directory / name
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise RequestRejected(f"{folder} must be a directory inside the drop directory, not a link or a file")
    results = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in (".json", ".csv"):
            continue
        if not path.is_symlink() and not path.is_file():
            continue
        try:
            receipts = _import_one(ws, path)
        except Exception as exc:  # noqa: BLE001 - one file's failure, whatever it is, is that file's result
            reason = str(exc) if isinstance(exc, RequestRejected) else f"could not be read ({type(exc).__name__})"
            try:
                moved = _move(path, directory / "rejected")
                (moved.parent / f"{moved.name}.reason.txt").write_text(f"{reason}\n")
            except OSError as move_error:
                results.append({"file": path.name, "status": "error",
                                "reason": f"{reason}; could not move it to rejected/ ({move_error.strerror})"})
                continue
            results.append({"file": path.name, "status": "rejected", "reason": reason})
            continue
        moved = _move(path, directory / "done")
        (moved.parent / f"{moved.name}.receipts.json").write_text(json.dumps(receipts, indent=2) + "\n")
        results.append({"file": path.name, "status": "done", "receipts": receipts})
    return results
