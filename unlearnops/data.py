"""Dataset versions: load the workspace dataset, write a version without deleted samples, and record it
with DVC (``data.dvc`` committed to the workspace's git, data pushed to the workspace's DVC remote)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import chdir
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from unlearnops import faults
from unlearnops.datasets import MANIFEST_COLUMNS
from unlearnops.durable import fsync_dir
from unlearnops.workspace import Workspace

FEATURES_FILE = "features.npy"
MANIFEST_FILE = "manifest.parquet"


class DataError(RuntimeError):
    """The dataset on disk is missing or does not match its format."""


@dataclass
class Dataset:
    features: np.ndarray
    manifest: pd.DataFrame

    def __len__(self) -> int:
        return len(self.manifest)

    def select(self, mask: np.ndarray | pd.Series) -> "Dataset":
        mask = np.asarray(mask, dtype=bool)
        return Dataset(self.features[mask], self.manifest[mask].reset_index(drop=True))

    def split(self, name: str) -> "Dataset":
        return self.select(self.manifest["split"] == name)

    def by_ids(self, sample_ids) -> "Dataset":
        return self.select(self.manifest["sample_id"].isin(list(sample_ids)))

    @property
    def labels(self) -> np.ndarray:
        return self.manifest["label"].to_numpy(dtype=np.int64)


@dataclass(frozen=True)
class DatasetVersion:
    """One committed dataset version: the workspace git revision and the DVC md5 of ``data/``."""

    git_rev: str
    dvc_md5: str
    n_samples: int

    def to_dict(self) -> dict:
        return {"git_rev": self.git_rev, "dvc_md5": self.dvc_md5, "n_samples": self.n_samples}


def save_dataset(path: Path, dataset: Dataset) -> None:
    path.mkdir(parents=True, exist_ok=True)
    missing = set(MANIFEST_COLUMNS) - set(dataset.manifest.columns)
    if missing:
        raise DataError(f"manifest lacks columns {sorted(missing)}")
    if len(dataset.features) != len(dataset.manifest):
        raise DataError("features and manifest differ in length")
    # Write both files under temporary names first, then rename features, then manifest: a crash leaves
    # either the old pair, the new pair, or a state that recover_dataset() rolls forward.
    tmp_features = path / (FEATURES_FILE + ".tmp")
    tmp_manifest = path / (MANIFEST_FILE + ".tmp")
    with open(tmp_features, "wb") as fh:
        np.save(fh, np.ascontiguousarray(dataset.features, dtype=np.float32))
        fh.flush()
        os.fsync(fh.fileno())
    dataset.manifest.to_parquet(tmp_manifest, index=False)
    with open(tmp_manifest, "rb") as fh:
        os.fsync(fh.fileno())
    tmp_features.replace(path / FEATURES_FILE)
    fsync_dir(path)
    faults.point("dataset_version.features_replaced")
    tmp_manifest.replace(path / MANIFEST_FILE)
    fsync_dir(path)


def recover_dataset(path: Path) -> None:
    """Finish or undo a :func:`save_dataset` that a crash interrupted.

    The features file is renamed only after both temporary files are complete, so a lone manifest
    temporary means the new features are in place: roll forward. Any other leftover temporary may be
    half-written: remove it (the old pair is intact).
    """
    tmp_features = path / (FEATURES_FILE + ".tmp")
    tmp_manifest = path / (MANIFEST_FILE + ".tmp")
    if tmp_manifest.is_file() and not tmp_features.exists():
        tmp_manifest.replace(path / MANIFEST_FILE)
        fsync_dir(path)
    tmp_features.unlink(missing_ok=True)
    tmp_manifest.unlink(missing_ok=True)


def load_dataset(path: Path, mmap: bool = True) -> Dataset:
    features_path, manifest_path = path / FEATURES_FILE, path / MANIFEST_FILE
    if not features_path.is_file() or not manifest_path.is_file():
        raise DataError(f"no dataset at {path} (expected {FEATURES_FILE} and {MANIFEST_FILE})")
    features = np.load(features_path, mmap_mode="r" if mmap else None)
    manifest = pd.read_parquet(manifest_path)
    if len(features) != len(manifest):
        raise DataError(f"{path}: {len(features)} feature rows but {len(manifest)} manifest rows")
    return Dataset(features, manifest)


# -- git / DVC -------------------------------------------------------------------------------------


def route_dvc_logs_to_stderr() -> None:
    """DVC binds its console log handlers to the ``sys.stdout`` of the moment it is first imported; point
    them at the current ``sys.stderr`` so DVC's messages never mix with a command's output (``--json``)
    and never write to a stream that has since been closed (e.g. a test runner's capture)."""
    import logging

    import dvc  # noqa: F401  (installs the handlers)

    for handler in logging.getLogger("dvc").handlers:
        if isinstance(handler, logging.StreamHandler):
            with handler.lock:  # not setStream(): it flushes the old stream, which may be closed
                handler.stream = sys.stderr


def git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"git {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def init_repository(ws: Workspace) -> None:
    """Make the workspace a git repository with DVC and a local DVC remote inside it."""
    from dvc.repo import Repo

    route_dvc_logs_to_stderr()
    root = ws.root
    if not (root / ".git").is_dir():
        git(root, "init", "-q", "-b", "main")
        git(root, "config", "user.name", "unlearnops")
        git(root, "config", "user.email", "unlearnops@localhost")
    if not (root / ".dvc").is_dir():
        Repo.init(str(root))
    ws.dvc_remote.mkdir(parents=True, exist_ok=True)
    with chdir(root), Repo(str(root)) as repo:
        with repo.config.edit() as conf:
            conf["remote"]["local"] = {"url": str(ws.dvc_remote)}
            conf["core"]["remote"] = "local"
            conf["core"]["analytics"] = False
            conf["core"]["autostage"] = True


def dvc_md5(ws: Workspace) -> str:
    meta = yaml.safe_load((ws.root / "data.dvc").read_text())
    return meta["outs"][0]["md5"]


def commit_dataset_version(ws: Workspace, message: str, extra_paths: tuple[str, ...] = ()) -> DatasetVersion:
    """Track ``data/`` with DVC, push it to the workspace remote and commit ``data.dvc`` to git."""
    from dvc.repo import Repo

    route_dvc_logs_to_stderr()
    with chdir(ws.root), Repo(str(ws.root)) as repo:  # DVC resolves paths against the working directory
        repo.add("data")
        repo.push()
    git(ws.root, "add", "data.dvc", ".gitignore", *extra_paths)
    if git(ws.root, "status", "--porcelain", "--", "data.dvc", *extra_paths):
        git(ws.root, "commit", "-q", "-m", message)
    return current_version(ws)


def current_version(ws: Workspace) -> DatasetVersion:
    manifest = pd.read_parquet(ws.data_dir / MANIFEST_FILE, columns=["sample_id"])
    return DatasetVersion(git_rev=git(ws.root, "rev-parse", "HEAD"), dvc_md5=dvc_md5(ws), n_samples=len(manifest))
