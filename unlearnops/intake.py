"""Request intake: one path for every channel (CLI, Python API, later files and HTTP)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from pydantic import ValidationError

from unlearnops import data
from unlearnops.locate import check_request
from unlearnops.requests import DeletionRequest, RequestRejected, RequestStore, StoredRequest
from unlearnops.workspace import Workspace


def parse_request(payload: dict[str, Any] | DeletionRequest) -> DeletionRequest:
    """Validate a request payload; a :class:`RequestRejected` says what is wrong, field by field."""
    if isinstance(payload, DeletionRequest):
        return payload
    try:
        return DeletionRequest.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise RequestRejected(problems) from None


def submit(ws: Workspace, payload: dict[str, Any] | DeletionRequest) -> tuple[StoredRequest, bool]:
    """Validate, check against the current dataset, and store. Returns (stored request, newly created)."""
    request = parse_request(payload)
    store = RequestStore(ws.requests_db)
    if request.idempotency_key:
        for existing in store.list():
            if existing.request.idempotency_key == request.idempotency_key:
                return existing, False
    manifest = pd.read_parquet(ws.data_dir / data.MANIFEST_FILE)
    check_request(request, manifest)
    return store.add(request)
