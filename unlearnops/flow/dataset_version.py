"""Step ``dataset_version``: keep the deleted samples for unlearning in the run directory — the batch's
own and those carried from earlier uncertified batches (copied from their run directories) — then commit a
dataset version without them (DVC add + push to the workspace remote + git commit of ``data.dvc``) and mark
the batch's requests ``cut``."""

from __future__ import annotations

import io

import numpy as np

from unlearnops import data, faults
from unlearnops.durable import atomic_write_bytes
from unlearnops.flow.batch import FORGET_FILE, Batch
from unlearnops.requests import RequestStore
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
        if not forget_path.is_file() and (present.any() or batch.carried_ids):
            forget = dataset.select(present)
            arrays = {
                "features": forget.features, "labels": forget.labels,
                "sample_ids": forget.manifest["sample_id"].to_numpy(dtype=str),
                "split": forget.manifest["split"].to_numpy(dtype=str),
            }
            carried = carried_arrays(ws, batch)
            if carried is not None:
                arrays = {k: np.concatenate([arrays[k], carried[k]]) for k in arrays}
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write_bytes(forget_path, buffer.getvalue())
        if present.any():
            data.save_dataset(ws.data_dir, dataset.select(~present))
        removed = len(batch.forget_ids)
        version = data.commit_dataset_version(
            ws, f"remove {removed} samples for {', '.join(batch.request_ids)} (run {batch.run_id})"
        )
        faults.point("dataset_version.committed")
        batch.dataset_after = version.to_dict()
        RequestStore(ws.requests_db).mark_cut(batch.request_ids, version.git_rev, batch.run_id)
    return batch


def carried_arrays(ws: Workspace, batch: Batch) -> dict[str, np.ndarray] | None:
    """The carried samples' rows (features, labels, sample_ids, split) from the earlier batches' forget
    copies; a carried sample whose copy is gone is left out (only an exact method can still forget it)."""
    wanted = set(batch.carried_ids)
    parts: dict[str, list] = {"features": [], "labels": [], "sample_ids": [], "split": []}
    seen: set[str] = set()
    for run_id in batch.carried_runs:
        path = ws.runs_dir / run_id / FORGET_FILE
        if not path.is_file():
            continue
        with np.load(path, allow_pickle=False) as arrays:
            ids = arrays["sample_ids"].astype(str)
            keep = np.array([s in wanted and s not in seen for s in ids], dtype=bool)
            seen |= set(ids[keep])
            for key in parts:
                parts[key].append(arrays[key][keep])
    if not seen:
        return None
    return {key: np.concatenate(values) for key, values in parts.items()}
