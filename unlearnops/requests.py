"""Deletion requests: one validated schema, a durable sqlite store, and the request lifecycle.

The invariant: a request is closed (``forgotten``) only when a certified model version whose training data
excludes its samples is the champion. Until then its state says where it is:

``received`` → ``located`` (its samples found) → ``cut`` (dataset revision without them, ``dataset_rev``) →
``uncertified`` (a version was made but did not pass the gates: ``model_version``, ``reasons``; the next
batch carries its samples again) | ``certified`` (``certified_version``, the candidate that forgot them) →
``forgotten`` (``champion_version``: promoted). ``rejected`` (reason; final) and ``failed`` (retryable, with
attempts) as before. Stores written before these states held ``processed``; it is read as ``cut`` until
:func:`unlearnops.obligations.settle_legacy` maps each such row by its version (forgotten, certified or
uncertified). Raw subject ids are kept only until the request is located, then only their keyed hashes
(``hmac:<hex>``, :func:`unlearnops.keys.keyed_hash`).
"""

from __future__ import annotations

import json
import math
import sqlite3
import uuid
from contextlib import contextmanager
from pathlib import Path
from datetime import datetime, timedelta, timezone
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unlearnops.clock import utc_now

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_TARGETS = 100_000

State = Literal["received", "located", "cut", "uncertified", "certified", "forgotten", "rejected", "failed"]
#: ``exact``: only the samples the request names (ids, hashes); ``expand``: also their near-duplicates found
#: by the near-duplicate locators above their thresholds.
Policy = Literal["exact", "expand"]
#: Waiting for a batch to locate and cut their samples.
PENDING_STATES = ("received", "located", "failed")
#: Cut from the dataset but forgotten by no certified version: every new batch carries their samples.
CARRIED_STATES = ("cut", "uncertified")
#: Every state of an open obligation.
OPEN_STATES = PENDING_STATES + CARRIED_STATES + ("certified",)
FINAL_STATES = ("forgotten", "rejected")
#: Prefix of a subject id replaced by its keyed hash once the request is located.
HASHED_PREFIX = "hmac:"


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


    #: When the request is due (``[requests] due_days`` after receipt).
    due_at: str | None = None
    #: The batch (run directory) that last carried its samples.
    run_id: str | None = None
    #: Why its last version was not certified (state ``uncertified``).
    reasons: list[str] = Field(default_factory=list)
    #: The certified version that forgot its samples, and the champion that closed it.
    certified_version: str | None = None
    champion_version: str | None = None
    forgotten_at: str | None = None
    #: sha256 of the certificate of ``certified_version`` (for the receipt).
    certificate_sha256: str | None = None
    #: What ``unlearnops purge`` cleaned after it was forgotten: store -> count of items.
    purged: dict = Field(default_factory=dict)

    @property
    def open(self) -> bool:
        """Whether the obligation is still open (not forgotten, not rejected)."""
        return self.state in OPEN_STATES

    def days_left(self, now: datetime | None = None) -> int | None:
        """Whole days until the due date (negative: overdue); None for a closed request."""
        if not self.open or not self.due_at:
            return None
        now = now or datetime.now(timezone.utc)
        return math.floor((datetime.fromisoformat(self.due_at) - now).total_seconds() / 86400)

    def overdue(self, now: datetime | None = None) -> bool:
        if not self.open or not self.due_at:
            return False
        return datetime.fromisoformat(self.due_at) < (now or datetime.now(timezone.utc))

    def view(self) -> dict:
        """The request as JSON with ``days_left`` and ``overdue`` (status, request show/list, HTTP)."""
        return {**self.model_dump(mode="json"), "days_left": self.days_left(), "overdue": self.overdue()}


class IdempotencyConflict(ValueError):
    """The idempotency key was already used for a different request; nothing was stored (HTTP 409)."""


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
_ADDED_COLUMNS = {"rejection_reason": "TEXT", "resolved_by": "TEXT", "due_at": "TEXT", "run_id": "TEXT",
                  "reasons_json": "TEXT NOT NULL DEFAULT '[]'", "certified_version": "TEXT",
                  "champion_version": "TEXT", "forgotten_at": "TEXT", "certificate_sha256": "TEXT",
                  "purged_json": "TEXT NOT NULL DEFAULT '{}'"}
DEFAULT_DUE_DAYS = 30


def due_date(created_at: str, due_days: int = DEFAULT_DUE_DAYS) -> str:
    """``created_at`` plus ``due_days`` days (ISO 8601)."""
    return (datetime.fromisoformat(created_at) + timedelta(days=due_days)).isoformat(timespec="seconds")


def targets(request: DeletionRequest, hashed_subjects: list[str] | None = None) -> tuple:
    """What a request names, subjects as keyed hashes (``hashed_subjects``: the hashed form of its
    subject ids) — the identity intake compares for idempotency and duplicates."""
    subjects = request.subject_ids if hashed_subjects is None else hashed_subjects
    return (tuple(sorted(subjects)), tuple(request.sample_ids), tuple(request.content_sha256), request.policy)


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
            for request_id, created_at in db.execute(
                    "SELECT id, created_at FROM requests WHERE due_at IS NULL").fetchall():
                try:  # rows from before deadlines: due ``DEFAULT_DUE_DAYS`` after receipt
                    db.execute("UPDATE requests SET due_at=? WHERE id=?", (due_date(created_at), request_id))
                except ValueError:
                    pass
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
            state="cut" if row["state"] == "processed" else row["state"],  # legacy rows, see settle_legacy
            request=DeletionRequest.model_validate_json(row["request_json"]),
            located_sample_ids=json.loads(row["located_json"]),
            dataset_rev=row["dataset_rev"],
            model_version=row["model_version"],
            error=row["error"],
            attempts=row["attempts"],
            rejection_reason=row["rejection_reason"],
            resolved_by=row["resolved_by"],
            due_at=row["due_at"],
            run_id=row["run_id"],
            reasons=json.loads(row["reasons_json"] or "[]"),
            certified_version=row["certified_version"],
            champion_version=row["champion_version"],
            forgotten_at=row["forgotten_at"],
            certificate_sha256=row["certificate_sha256"],
            purged=json.loads(row["purged_json"] or "{}"),
        )

    def add(self, request: DeletionRequest, due_days: int = DEFAULT_DUE_DAYS,
            same=lambda stored, request: stored.request.model_dump() == request.model_dump()
            ) -> tuple[StoredRequest, bool]:
        """Store a validated request; returns (stored, created). A repeated idempotency key returns the
        original request with ``created=False`` when ``same(stored, request)``, else raises
        :class:`IdempotencyConflict` (nothing stored)."""
        with self._connect() as db:
            if request.idempotency_key:
                row = db.execute(
                    "SELECT * FROM requests WHERE idempotency_key = ?", (request.idempotency_key,)
                ).fetchone()
                if row:
                    stored = self._row(row)
                    if not same(stored, request):
                        raise IdempotencyConflict(
                            f"idempotency key {request.idempotency_key!r} was used for request {stored.id} with "
                            "different targets or options; use a new key for a new request")
                    return stored, False
            request_id = "req-" + uuid.uuid4().hex[:12]
            now = utc_now()
            db.execute(
                "INSERT INTO requests (id, created_at, updated_at, state, request_json, idempotency_key, due_at)"
                " VALUES (?, ?, ?, 'received', ?, ?, ?)",
                (request_id, now, now, request.model_dump_json(), request.idempotency_key,
                 due_date(now, due_days)),
            )
            row = db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
            return self._row(row), True

    def legacy(self) -> list[tuple[str, str | None]]:
        """(id, model version) of rows still in the old ``processed`` state."""
        with self._connect() as db:
            return [(r["id"], r["model_version"])
                    for r in db.execute("SELECT id, model_version FROM requests WHERE state='processed'")]

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
        if states and "cut" in states:
            states = (*states, "processed")  # legacy rows read as cut
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

    def mark_located(self, located: dict[str, list[str]], run_id: str | None = None,
                     hash_subject=None) -> None:
        """Record each request's samples; ``hash_subject`` (id -> keyed hash) replaces its raw subject ids
        by ``hmac:<hash>`` from now on (they are not needed any more)."""
        with self._connect() as db:
            for request_id, sample_ids in located.items():
                db.execute(
                    "UPDATE requests SET state='located', located_json=?, run_id=?, updated_at=?, error=NULL"
                    " WHERE id=?", (json.dumps(sorted(sample_ids)), run_id, utc_now(), request_id),
                )
                if hash_subject is not None:
                    self._redact(db, request_id, hash_subject)

    def _redact(self, db: sqlite3.Connection, request_id: str, hash_subject) -> None:
        row = db.execute("SELECT request_json FROM requests WHERE id=?", (request_id,)).fetchone()
        request = DeletionRequest.model_validate_json(row["request_json"])
        hashed = sorted({s if s.startswith(HASHED_PREFIX) else HASHED_PREFIX + hash_subject(s)
                         for s in request.subject_ids})
        if hashed != request.subject_ids:
            request = request.model_copy(update={"subject_ids": hashed})
            db.execute("UPDATE requests SET request_json=? WHERE id=?", (request.model_dump_json(), request_id))

    def redact(self, request_ids: list[str], hash_subject) -> None:
        """Replace the raw subject ids of these requests by their keyed hashes."""
        with self._connect() as db:
            for request_id in request_ids:
                self._redact(db, request_id, hash_subject)

    def compact(self) -> None:
        """Checkpoint the write-ahead log and VACUUM, so overwritten values (raw subject ids) leave the file."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    def _update(self, request_ids: list[str], assignments: str, values: tuple, states: tuple[str, ...]) -> None:
        marks = ",".join("?" * len(states))
        with self._connect() as db:
            for request_id in request_ids:
                db.execute(f"UPDATE requests SET {assignments}, updated_at=? WHERE id=? AND state IN ({marks})",
                           (*values, utc_now(), request_id, *states))

    def mark_cut(self, request_ids: list[str], dataset_rev: str, run_id: str) -> None:
        """Their samples are cut: ``dataset_rev`` is the dataset revision without them."""
        self._update(request_ids, "state='cut', dataset_rev=?, run_id=?, error=NULL", (dataset_rev, run_id),
                     (*PENDING_STATES, *CARRIED_STATES, "processed"))

    def mark_uncertified(self, request_ids: list[str], dataset_rev: str, model_version: str | None,
                         reasons: list[str]) -> None:
        """Their batch made ``model_version`` but it is not certified: the obligation stays open."""
        self._update(request_ids, "state='uncertified', dataset_rev=?, model_version=?, reasons_json=?, error=NULL",
                     (dataset_rev, model_version, json.dumps(reasons)), (*PENDING_STATES, *CARRIED_STATES, "processed"))

    def mark_certified(self, request_ids: list[str], dataset_rev: str, version: str,
                       certificate_sha256: str | None) -> None:
        """``version`` (certified) forgot their samples; they close when it (or a descendant) is champion."""
        self._update(request_ids, "state='certified', dataset_rev=?, model_version=?, certified_version=?,"
                     " certificate_sha256=?, reasons_json='[]', error=NULL",
                     (dataset_rev, version, version, certificate_sha256),
                     (*PENDING_STATES, *CARRIED_STATES, "processed"))

    def mark_forgotten(self, request_ids: list[str], champion: str) -> None:
        """The champion ``champion`` descends from (or is) their certified version: closed."""
        now = utc_now()
        self._update(request_ids, "state='forgotten', champion_version=?, forgotten_at=?", (champion, now),
                     ("certified", "processed"))

    def mark_purged(self, request_ids: list[str], cleaned: dict) -> None:
        """Record what a purge cleaned for these forgotten requests (for their receipts)."""
        self._update(request_ids, "purged_json=?", (json.dumps(cleaned, sort_keys=True),), ("forgotten",))

    def settle_legacy(self, request_id: str, state: str, certified_version: str | None = None,
                      champion: str | None = None, reasons: list[str] = ()) -> None:
        """Map one row of the old ``processed`` state (see :func:`unlearnops.obligations.settle_legacy`)."""
        self._update([request_id], "state=?, certified_version=?, champion_version=?, reasons_json=?",
                     (state, certified_version, champion, json.dumps(list(reasons))), ("processed",))

    def mark_failed(self, request_ids: list[str], error: str) -> None:
        """A failed attempt (retryable): open requests of the batch; their cut, if any, is kept."""
        with self._connect() as db:
            for request_id in request_ids:
                db.execute(
                    "UPDATE requests SET state='failed', error=?, attempts=attempts+1, updated_at=?"
                    " WHERE id=? AND state IN ('received', 'located', 'failed', 'cut', 'uncertified')",
                    (error[:2000], utc_now(), request_id),
                )

    def mark_rejected(self, request_id: str, reason: str) -> StoredRequest:
        """Reject a waiting request (final). Rejecting a rejected request again returns it unchanged;
        a request whose samples are cut (or later) cannot be rejected (:class:`TransitionRefused`)."""
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

    def mark_already_deleted(self, request_id: str, earlier: StoredRequest, hash_subject=None) -> None:
        """Settle a waiting request whose every target ``earlier`` already cut: it takes ``earlier``'s state,
        dataset revision and versions, with ``resolved_by`` naming it (and follows it from then on)."""
        state = "cut" if earlier.state == "failed" else earlier.state
        with self._connect() as db:
            db.execute(
                "UPDATE requests SET state=?, dataset_rev=?, model_version=?, certified_version=?,"
                " champion_version=?, forgotten_at=?, certificate_sha256=?, run_id=?, reasons_json=?,"
                " resolved_by=?, error=NULL, updated_at=? WHERE id=? AND state IN ('received', 'located', 'failed')",
                (state, earlier.dataset_rev, earlier.model_version, earlier.certified_version,
                 earlier.champion_version, earlier.forgotten_at, earlier.certificate_sha256, earlier.run_id,
                 json.dumps(earlier.reasons), earlier.id, utc_now(), request_id),
            )
            if hash_subject is not None:
                self._redact(db, request_id, hash_subject)
