"""Locate the training samples a deletion request touches: by sample id, subject id or content hash."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from unlearnops.requests import DeletionRequest, RequestRejected

#: locator name -> (request field, manifest column)
EXACT_LOCATORS = {
    "sample_id": ("sample_ids", "sample_id"),
    "subject_id": ("subject_ids", "subject_id"),
    "content_sha256": ("content_sha256", "content_sha256"),
}


@dataclass
class Located:
    """The samples of one request, and which locator found each."""

    sample_ids: set[str] = field(default_factory=set)
    found_by: dict[str, str] = field(default_factory=dict)
    unmatched: dict[str, list[str]] = field(default_factory=dict)


def locate(request: DeletionRequest, manifest: pd.DataFrame) -> Located:
    result = Located()
    for locator, (request_field, column) in EXACT_LOCATORS.items():
        wanted = getattr(request, request_field)
        if not wanted:
            continue
        columns = list(dict.fromkeys(["sample_id", column]))  # the sample_id locator needs it once
        hits = manifest.loc[manifest[column].isin(wanted), columns]
        for sample_id in hits["sample_id"]:
            result.sample_ids.add(str(sample_id))
            result.found_by.setdefault(str(sample_id), locator)
        missing = sorted(set(wanted) - set(hits[column].astype(str)))
        if missing:
            result.unmatched[request_field] = missing
    return result


def check_request(request: DeletionRequest, manifest: pd.DataFrame) -> Located:
    """Refuse a request that names anything absent from the current dataset (nothing is stored)."""
    located = locate(request, manifest)
    if located.unmatched:
        raise RequestRejected(describe_unmatched(located))
    return located


def describe_unmatched(located: Located) -> str:
    """``unknown subject id: a, b; unknown sample id: c`` (at most five ids per field)."""
    parts = []
    for request_field, missing in located.unmatched.items():
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        parts.append(f"unknown {request_field.rstrip('s').replace('_', ' ')}: {shown}")
    return "; ".join(parts)
