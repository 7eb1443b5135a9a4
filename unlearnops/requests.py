"""Deletion requests: one validated schema, a durable sqlite store, and the request lifecycle.

States: ``received`` → ``located`` → ``processed`` (dataset revision, model version) | ``rejected``
(reason; final) | ``failed`` (retryable, with attempts). Malformed or unknown requests are refused before
anything is stored. A stored request is rejected by the flow when, at locate time, none of its targets is in
the dataset and no earlier request deleted them (they vanished some other way), or by an operator
(``unlearnops request reject``) while it waits; one whose every target an earlier request already deleted is
processed as a no-op pointing at that request (``resolved_by``) and that request's dataset revision and model
version.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unlearnops.clock import utc_now

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_TARGETS = 100_000

State = Literal["received", "located", "processed", "rejected", "failed"]
#: ``exact``: only the samples the request names (ids, hashes); ``expand``: also their near-duplicates found
#: by the near-duplicate locators above their thresholds.
Policy = Literal["exact", "expand"]
PENDING_STATES = ("received", "located", "failed")
FINAL_STATES = ("processed", "rejected")


class RequestRejected(ValueError):
    """The request is invalid or names nothing that exists; nothing was stored."""


class DeletionRequest(BaseModel):
    """What to forget. At least one of ``subject_ids``, ``sample_ids``, ``content_sha256``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    subject_ids: list[str] = Field(default_factory=list, max_length=MAX_TARGETS)
    sample_ids: list[str] = Field(default_factory=list, max_length=MAX_TARGETS)
    content_sha256: list[str] = Field(default_factory=list, max_length=MAX_TARGETS)
    reason: str = Field("erasure", min_length=1, max_length=500)
    policy: Policy = "exact"
    idempotency_key: str | None = Field(None, pattern=ID_PATTERN)

    @field_validator("subject_ids", "sample_ids")
    @classmethod
    def _ids_are_plain(cls, values: list[str]) -> list[str]:
        import re

        bad = [v for v in values if not re.fullmatch(ID_PATTERN, v)]
        if bad:
            raise ValueError(
                f"malformed id {bad[0]!r}: ids are 1-128 characters of letters, digits and . _ : @ -"
            )
        return sorted(set(values))

    @field_validator("content_sha256")
    @classmethod
    def _hashes_are_hex(cls, values: list[str]) -> list[str]:
        import re

        values = [v.lower() for v in values]
        bad = [v for v in values if not re.fullmatch(SHA256_PATTERN, v)]
        if bad:
            raise ValueError(f"malformed sha256 {bad[0]!r}: expected 64 hex digits")
        return sorted(set(values))

    @model_validator(mode="after")
    def _names_something(self) -> "DeletionRequest":
        if not (self.subject_ids or self.sample_ids or self.content_sha256):
            raise ValueError("a request must name at least one subject id, sample id or content hash")
        return self


class StoredRequest(BaseModel):
    id: str
    created_at: str
    updated_at: str
    state: State
    request: DeletionRequest
    located_sample_ids: list[str] = Field(default_factory=list)
    dataset_rev: str | None = None
    model_version: str | None = None
    error: str | None = None
    attempts: int = 0
    #: Why the request was rejected (state ``rejected``): by the flow, or by an operator.
    rejection_reason: str | None = None
    #: The earlier request that had already deleted every target of this one (an idempotent no-op).
    resolved_by: str | None = None


class TransitionRefused(ValueError):
    """The request is not in a state that allows the change (e.g. rejecting a processed request)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    state TEXT NOT NULL,
    request_json TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    located_json TEXT NOT NULL DEFAULT '[]',
    dataset_rev TEXT,
    model_version TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    rejection_reason TEXT,
    resolved_by TEXT
);
"""
#: Columns added after the first schema; added to older stores when they are opened.
_ADDED_COLUMNS = {"rejection_reason": "TEXT", "resolved_by": "TEXT"}


class RequestStore:
    """Durable request store (sqlite, one transaction per change)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.executescript(_SCHEMA)
            present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
            db.commit()
        finally:
            db.close()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    @staticmethod
    def _row(row: sqlite3.Row) -> StoredRequest:
        return StoredRequest(
            id=row["id"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            state=row["state"],
            request=DeletionRequest.model_validate_json(row["request_json"]),
            located_sample_ids=json.loads(row["located_json"]),
            dataset_rev=row["dataset_rev"],
            model_version=row["model_version"],
            error=row["error"],
            attempts=row["attempts"],
            rejection_reason=row["rejection_reason"],
            resolved_by=row["resolved_by"],
        )

    def add(self, request: DeletionRequest) -> tuple[StoredRequest, bool]:
        """Store a validated request; returns (stored, created). A repeated idempotency key returns the
        original request unchanged with ``created=False``."""
        with self._connect() as db:
            if request.idempotency_key:
                row = db.execute(
                    "SELECT * FROM requests WHERE idempotency_key = ?", (request.idempotency_key,)
                ).fetchone()
                if row:
                    return self._row(row), False
            request_id = "req-" + uuid.uuid4().hex[:12]
            now = utc_now()
            db.execute(
                "INSERT INTO requests (id, created_at, updated_at, state, request_json, idempotency_key)"
                " VALUES (?, ?, ?, 'received', ?, ?)",
                (request_id, now, now, request.model_dump_json(), request.idempotency_key),
            )
            row = db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
            return self._row(row), True

    def by_idempotency_key(self, key: str) -> StoredRequest | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM requests WHERE idempotency_key = ?", (key,)).fetchone()
        return None if row is None else self._row(row)

    def get(self, request_id: str) -> StoredRequest:
        with self._connect() as db:
            row = db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise KeyError(f"no request {request_id!r}")
        return self._row(row)

    def list(self, states: tuple[str, ...] | None = None) -> list[StoredRequest]:
        with self._connect() as db:
            if states:
                marks = ",".join("?" * len(states))
                rows = db.execute(
                    f"SELECT * FROM requests WHERE state IN ({marks}) ORDER BY created_at, id", states
                ).fetchall()
            else:
                rows = db.execute("SELECT * FROM requests ORDER BY created_at, id").fetchall()
        return [self._row(r) for r in rows]

    def pending(self) -> list[StoredRequest]:
        return self.list(PENDING_STATES)

    def mark_located(self, located: dict[str, list[str]]) -> None:
        with self._connect() as db:
            for request_id, sample_ids in located.items():
                db.execute(
                    "UPDATE requests SET state='located', located_json=?, updated_at=?, error=NULL WHERE id=?",
                    (json.dumps(sorted(sample_ids)), utc_now(), request_id),
                )

    def mark_processed(self, request_ids: list[str], dataset_rev: str, model_version: str | None) -> None:
        with self._connect() as db:
            for request_id in request_ids:
                db.execute(
                    "UPDATE requests SET state='processed', dataset_rev=?, model_version=?, updated_at=?,"
                    " error=NULL WHERE id=? AND state != 'rejected'",
                    (dataset_rev, model_version, utc_now(), request_id),
                )

    def mark_failed(self, request_ids: list[str], error: str) -> None:
        with self._connect() as db:
            for request_id in request_ids:
                db.execute(
                    "UPDATE requests SET state='failed', error=?, attempts=attempts+1, updated_at=?"
                    " WHERE id=? AND state IN ('received', 'located', 'failed')",
                    (error[:2000], utc_now(), request_id),
                )

    def mark_rejected(self, request_id: str, reason: str) -> StoredRequest:
        """Reject a waiting request (final). Rejecting a rejected request again returns it unchanged;
        a processed request cannot be rejected (:class:`TransitionRefused`)."""
        reason = (reason or "").strip()
        if not 1 <= len(reason) <= 500:
            raise TransitionRefused("a rejection needs a reason of 1-500 characters")
        with self._connect() as db:
            row = db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
            if row is None:
                raise KeyError(f"no request {request_id!r}")
            if row["state"] == "rejected":
                return self._row(row)
            if row["state"] not in PENDING_STATES:
                raise TransitionRefused(f"request {request_id} is {row['state']}: only a waiting request "
                                        f"({', '.join(PENDING_STATES)}) can be rejected")
            db.execute(
                "UPDATE requests SET state='rejected', rejection_reason=?, updated_at=? WHERE id=?",
                (reason, utc_now(), request_id),
            )
            return self._row(db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone())

    def mark_already_deleted(self, request_id: str, earlier: StoredRequest) -> None:
        """Close a waiting request whose every target ``earlier`` (processed) already deleted: processed,
        with the earlier request's dataset revision and model version, and ``resolved_by`` naming it."""
        with self._connect() as db:
            db.execute(
                "UPDATE requests SET state='processed', dataset_rev=?, model_version=?, resolved_by=?,"
                " error=NULL, updated_at=? WHERE id=? AND state IN ('received', 'located', 'failed')",
                (earlier.dataset_rev, earlier.model_version, earlier.id, utc_now(), request_id),
            )
