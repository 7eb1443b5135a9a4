"""What every model version's MLflow run records beyond its files: metrics with the same keys on every
version (base and unlearned alike, so the MLflow UI compares them in one column) and the DVC dataset
version as an MLflow dataset input.

Keys (NaN where a version has no such value: nothing forgotten yet, no gate run, not measured):

- ``<split>_accuracy`` / ``<split>_loss`` for ``train``, ``holdout``, ``test``, ``forget`` and ``mia_auc``:
  the version's own value; ``parent_<key>``: its parent's on the same samples.
- ``gate_<name>_passed``: 1 pass, 0 fail or inconclusive, NaN not applicable or not run; and
  ``gate_<name>_<statistic>`` for each statistic the gate declares in its ``statistics`` attribute
  (``<x>_low``/``<x>_high`` read the two ends of an interval ``x``).
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

#: The version's own evaluation keys (``parent_`` + key: the parent's value).
OWN_KEYS = ("train_accuracy", "holdout_accuracy", "test_accuracy", "forget_accuracy",
            "holdout_loss", "test_loss", "forget_loss", "mia_auc")
NAN = float("nan")


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return NAN


def statistic(metrics: dict[str, Any], key: str) -> float:
    """One declared statistic from a gate's metrics: a number (bools 1/0), an interval end, or NaN."""
    if key in metrics:
        return _number(metrics[key])
    stem, _, end = key.rpartition("_")
    interval = metrics.get(stem)
    if end in ("low", "high") and isinstance(interval, (list, tuple)) and len(interval) == 2:
        return _number(interval[0 if end == "low" else 1])
    return NAN


def gate_keys(gates: Iterable[Any]) -> dict[str, tuple[str, ...]]:
    """Gate name -> the statistics it declares, for the registered gate objects ``gates``."""
    return {g.name: tuple(getattr(g, "statistics", ())) for g in sorted(gates, key=lambda g: g.name)}


def registered_gate_keys() -> dict[str, tuple[str, ...]]:
    """:func:`gate_keys` of every gate the loaded plugins register."""
    from unlearnops.plugin_manager import load_plugins

    return gate_keys(e.obj for e in load_plugins().entries["gate"].values())


def gate_metrics(declared: dict[str, tuple[str, ...]], results: Iterable[Any] = ()) -> dict[str, float]:
    """``gate_<name>_passed`` and ``gate_<name>_<statistic>`` for every declared gate; NaN for a gate
    without a result (the base version) or a statistic the result lacks."""
    by_name = {r.name: r for r in results}
    out: dict[str, float] = {}
    for name, statistics in declared.items():
        result = by_name.get(name)
        applicable = result is not None and result.status != "not_applicable"
        out[f"gate_{name}_passed"] = (1.0 if result.status == "pass" else 0.0) if applicable else NAN
        for key in statistics:
            out[f"gate_{name}_{key}"] = statistic(result.metrics, key) if result is not None else NAN
    return out


def base_metrics(evaluation: dict[str, float], declared: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """The metrics of a base (or imported) version: its split accuracies, NaN for everything a base has
    not got (a parent, a forget set, gate results)."""
    own = {k: _number(evaluation.get(k)) for k in OWN_KEYS}
    return {**own, **{f"parent_{k}": NAN for k in OWN_KEYS}, **gate_metrics(declared)}


def unlearned_metrics(before_after: dict[str, float], results: Iterable[Any],
                      declared: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """The metrics of an unlearned version from the ``gates`` step's ``<key>_before``/``<key>_after``
    values and its gate results."""
    own = {k: _number(before_after.get(f"{k}_after")) for k in OWN_KEYS}
    parent = {f"parent_{k}": _number(before_after.get(f"{k}_before")) for k in OWN_KEYS}
    return {**own, **parent, **gate_metrics(declared, results)}


def dataset_input(root: str, dataset: dict[str, Any], name: str = "data"):
    """The DVC dataset version ``dataset`` (``git_rev``, ``dvc_md5``, ``n_samples``) as an MLflow dataset:
    digest = the DVC md5 of ``data/``, source = the workspace's git repository at that revision."""
    from mlflow.data.meta_dataset import MetaDataset

    return MetaDataset(source=_source_class()(repo=str(root), path="data", rev=dataset["git_rev"]),
                       name=name, digest=dataset["dvc_md5"])


@functools.cache
def _source_class():
    from mlflow.data.dataset_source import DatasetSource

    class DvcDatasetSource(DatasetSource):
        """A DVC-tracked path of a git repository at one revision (``dvc.api.open(path, repo, rev)``)."""

        def __init__(self, repo: str, path: str, rev: str):
            self.repo, self.path, self.rev = repo, path, rev

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self, dst_path=None):
            """Check the revision out of the DVC cache/remote into ``dst_path`` (default: a temporary
            directory); the local path."""
            import tempfile

            from dvc.repo import Repo

            target = dst_path or tempfile.mkdtemp()
            Repo.get(self.repo, self.path, out=f"{target}/{self.path}", rev=self.rev)
            return f"{target}/{self.path}"

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any):
            raise NotImplementedError("a DVC source is built from repo, path and rev")

        def to_dict(self) -> dict[str, str]:
            return {"repo": self.repo, "path": self.path, "rev": self.rev}

        @classmethod
        def from_dict(cls, source_dict: dict[str, str]):
            return cls(source_dict["repo"], source_dict["path"], source_dict["rev"])

    return DvcDatasetSource


def __getattr__(name: str):
    """``DvcDatasetSource`` is built on first use, so importing this module does not import mlflow."""
    if name == "DvcDatasetSource":
        return _source_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
