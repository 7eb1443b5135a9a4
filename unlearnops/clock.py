"""The one clock format of records, certificates and request states."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """Now, in UTC, as an ISO 8601 string to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
