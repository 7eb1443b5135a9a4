"""Step ``dataset_version``: keep the deleted samples for unlearning in the run directory, then commit a
dataset version without them (DVC add + push to the workspace remote + git commit of ``data.dvc``)."""

from __future__ import annotations

import io

import numpy as np

from unlearnops import data, faults
from unlearnops.durable import atomic_write_bytes
from unlearnops.flow.batch import FORGET_FILE, Batch
from unlearnops.workspace import Workspace


def dataset_version(ws: Workspace, batch: Batch) -> Batch:
    """Cut the batch's samples from the dataset as one new DVC version.

    Re-running after an interruption is safe: a half-replaced dataset is rolled forward, samples already
    removed are not looked for again, and the commit happens only if ``data.dvc`` changed, so a batch makes
    at most one dataset revision."""
    with batch.timed(ws, "dataset_version"):
        data.recover_dataset(ws.data_dir)
        dataset = data.load_dataset(ws.data_dir, mmap=False)
        present = dataset.manifest["sample_id"].isin(batch.forget_ids).to_numpy()
        forget_path = batch.run_dir(ws) / FORGET_FILE
        if present.any():
            if not forget_path.is_file():
                forget = dataset.select(present)
                buffer = io.BytesIO()
                np.savez(
                    buffer,
                    features=forget.features,
                    labels=forget.labels,
                    sample_ids=forget.manifest["sample_id"].to_numpy(dtype=str),
                    split=forget.manifest["split"].to_numpy(dtype=str),
                )
                atomic_write_bytes(forget_path, buffer.getvalue())
            data.save_dataset(ws.data_dir, dataset.select(~present))
        removed = len(batch.forget_ids)
        version = data.commit_dataset_version(
            ws, f"remove {removed} samples for {', '.join(batch.request_ids)} (run {batch.run_id})"
        )
        faults.point("dataset_version.committed")
        batch.dataset_after = version.to_dict()
    return batch
