"""Wall-clock timestamps as unlearnops records them (requests, batches, certificates, audits, purges)."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-01-31T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
