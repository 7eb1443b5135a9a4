"""The sample sets the steps read: the deleted samples kept for the methods, and the workspace's splits
(held-out split halved into a ``calibration`` part for methods and a ``gate`` part for gates and audits)."""

from __future__ import annotations

import numpy as np

from unlearnops.data import load_dataset
from unlearnops.flow.batch import FORGET_FILE, Batch
from unlearnops.method_runner import Samples
from unlearnops.workspace import Workspace


def forget_samples(ws: Workspace, batch: Batch) -> Samples:
    """The deleted samples that the parent model was trained on."""
    path = batch.run_dir(ws) / FORGET_FILE
    if not path.is_file():
        return Samples(np.zeros((0,)), np.zeros((0,), dtype=np.int64), [])
    with np.load(path, allow_pickle=False) as arrays:
        train = arrays["split"] == "train"
        return Samples(arrays["features"][train], arrays["labels"][train], list(arrays["sample_ids"][train]))


def split_samples(ws: Workspace, split: str, limit: int | None = None, seed: int = 0,
                  part: str | None = None) -> Samples:
    """Samples of one split (``limit`` of them drawn with ``seed``); for ``holdout``, ``part`` keeps only its
    ``calibration`` (methods) or ``gate`` (gates, audit) half — see :func:`unlearnops.datasets.holdout_part`."""
    if part is not None and split != "holdout":
        raise ValueError(f"only the holdout split has parts, not {split!r}")
    subset = load_dataset(ws.data_dir).split(split) if part is None else holdout_split(ws, part)
    idx = np.arange(len(subset))
    if limit is not None and limit < len(subset):
        idx = np.sort(np.random.default_rng(seed).choice(len(subset), size=limit, replace=False))
    return Samples(
        np.asarray(subset.features[idx]), subset.labels[idx],
        subset.manifest["sample_id"].astype(str).iloc[idx].tolist(),
    )


def holdout_split(ws: Workspace, part: str):
    """The ``calibration`` or ``gate`` half of the current dataset's held-out split."""
    from unlearnops.datasets import HOLDOUT_PARTS, holdout_part

    if part not in HOLDOUT_PARTS:
        raise ValueError(f"unknown held-out part {part!r}: expected one of {HOLDOUT_PARTS}")
    holdout = load_dataset(ws.data_dir).split("holdout")
    return holdout.select(holdout.manifest["sample_id"].astype(str).map(holdout_part).to_numpy() == part)


def unlearned_model(ws: Workspace, batch: Batch):
    """The model the last rung wrote (``unlearned.safetensors`` in the run directory)."""
    from unlearnops.model import load_weights

    return load_weights(ws.model_factory, batch.run_dir(ws) / "unlearned.safetensors")
