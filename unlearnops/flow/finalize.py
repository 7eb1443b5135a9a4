"""Step ``finalize``: settle the batch's requests — ``certified`` (candidate) when every gate passed, else
``uncertified`` with the gate reasons (the obligation stays open and the next batch carries the samples) —
and delete copies of forgotten samples that no open obligation needs any more. Finalize never closes a
request: only a promotion does (:func:`unlearnops.obligations.close_on_promotion`)."""

from __future__ import annotations

import hashlib
import sys

from unlearnops.flow.batch import Batch
from unlearnops.requests import RequestStore
from unlearnops.workspace import Workspace


def gate_reasons(batch: Batch) -> list[str]:
    """Why the batch's version is not certified: every gate that did not pass, with its summary."""
    reasons = [f"{g.name}: {g.status} ({g.summary})" for g in batch.gates if g.status != "pass"]
    return reasons or [f"status {batch.status}"]


def finalize(ws: Workspace, batch: Batch) -> Batch:
    """Mark the batch's requests certified or uncertified and delete forget copies no longer needed."""
    from unlearnops.obligations import delete_unneeded_forget_copies

    store = RequestStore(ws.requests_db)
    rev = batch.dataset_after["git_rev"]
    if batch.certified:
        certificate = batch.run_dir(ws) / "certificate.json"
        digest = hashlib.sha256(certificate.read_bytes()).hexdigest() if certificate.is_file() else None
        store.mark_certified(batch.request_ids, rev, batch.registered_version, digest)
    else:
        store.mark_uncertified(batch.request_ids, rev, batch.registered_version, gate_reasons(batch))
    batch.save(ws)
    delete_unneeded_forget_copies(ws, finished=batch)
    from unlearnops.audit import prune_references

    # References that trained on this batch's samples served its gates as "out" models for the others only;
    # they hold deleted data, so they go now (the pool is topped up between batches: `references train`).
    pruned = prune_references(ws)
    if pruned:
        print(f"finalize: {len(pruned)} stale reference model(s) deleted", file=sys.stderr, flush=True)
    return batch
