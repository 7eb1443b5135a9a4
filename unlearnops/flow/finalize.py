"""Step ``finalize``: settle the batch's requests with the dataset revision and model version, and delete
the run directory's copy of the forgotten samples."""

from __future__ import annotations

from unlearnops.flow.batch import FORGET_FILE, Batch
from unlearnops.requests import RequestStore
from unlearnops.workspace import Workspace


def finalize(ws: Workspace, batch: Batch) -> Batch:
    """Mark the batch's requests processed and delete the copy of the forgotten samples."""
    RequestStore(ws.requests_db).mark_processed(
        batch.request_ids, batch.dataset_after["git_rev"], batch.registered_version
    )
    (batch.run_dir(ws) / FORGET_FILE).unlink(missing_ok=True)
    batch.save(ws)
    return batch
