"""The MLflow model registry of a workspace: register versions with lineage tags, move aliases, load models.

Embedded default: sqlite at ``.unlearnops/mlflow.db`` with artifacts under ``.unlearnops/mlartifacts``;
``UNLEARNOPS_TRACKING_URI`` points at a real ``mlflow server`` instead.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnops.workspace import Workspace

EXPERIMENT = "unlearnops"
TAG_PREFIX = "unlearnops."
#: Tag set to "true" on a model version that still carries data deleted since: it is never promoted.
TAINTED_TAG = TAG_PREFIX + "tainted"


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str


def client(ws: Workspace):
    """An MlflowClient bound to the workspace registry (also sets the process-wide URIs)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(ws.tracking_uri)
    mlflow.set_registry_uri(ws.tracking_uri)
    return MlflowClient(tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri)


def is_server(tracking_uri: str) -> bool:
    """True when ``tracking_uri`` names an MLflow tracking server (http/https) rather than a database."""
    return tracking_uri.split("://", 1)[0].lower() in ("http", "https")


def _experiment_id(ws: Workspace) -> str:
    """The workspace experiment, created on first use. With a database URI its artifacts go to
    ``.unlearnops/mlartifacts``; with a tracking server the server decides (its artifact store, proxied
    with ``--serve-artifacts``), so no artifact of a server-backed registry lands on the client's disk."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    if is_server(ws.tracking_uri):
        return mlflow.create_experiment(EXPERIMENT)
    ws.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(EXPERIMENT, artifact_location=ws.mlflow_artifacts.as_uri())


def register_model(
    ws: Workspace,
    model,
    *,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[Path] = (),
    aliases: tuple[str, ...] = (),
    nested_runs: list[dict[str, Any]] = (),
) -> RegisteredVersion:
    """Log ``model`` in a new run, register it as the next version of the workspace's model, tag the
    version with ``tags`` (prefixed ``unlearnops.``) and point ``aliases`` at it. Each of ``nested_runs``
    (``name``, ``params``, ``metrics``, ``tags``) becomes a child run, e.g. one per rung of the ladder."""
    import mlflow
    import torch

    mlflow_client = client(ws)
    name = ws.settings.project.model_name
    with mlflow.start_run(experiment_id=_experiment_id(ws), run_name=run_name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        mlflow.set_tags({TAG_PREFIX + k: v for k, v in tags.items()})
        for path in artifacts:
            mlflow.log_artifact(str(path))
        for child in nested_runs:
            with mlflow.start_run(experiment_id=run.info.experiment_id, run_name=child["name"], nested=True):
                mlflow.log_params({k: str(v)[:500] for k, v in child.get("params", {}).items()})
                mlflow.log_metrics({k: float(v) for k, v in child.get("metrics", {}).items() if v is not None})
                mlflow.set_tags({TAG_PREFIX + k: str(v)[:5000] for k, v in child.get("tags", {}).items()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pytorch.log_model(
                model.to("cpu"),
                name="model",
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "unlearnops"],
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, TAG_PREFIX + key, value)
    for alias in aliases:
        mlflow_client.set_registered_model_alias(name, alias, version)
    return RegisteredVersion(name=name, version=version, run_id=run.info.run_id, model_uri=info.model_uri)


def load_model(ws: Workspace, alias_or_version: str = "champion"):
    """Load a registered model by alias (``champion``) or version number."""
    import mlflow

    client(ws)
    name = ws.settings.project.model_name
    ref = f"{name}/{alias_or_version}" if alias_or_version.isdigit() else f"{name}@{alias_or_version}"
    return mlflow.pytorch.load_model(f"models:/{ref}", map_location="cpu")


def resolve_version(ws: Workspace, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client(ws).get_model_version_by_alias(ws.settings.project.model_name, alias).version)
    except MlflowException:
        return None


def versions_by_number(ws: Workspace) -> dict[str, Any]:
    """Every version of the workspace's model: version number -> MLflow ``ModelVersion`` (with its tags)."""
    name = ws.settings.project.model_name
    return {str(v.version): v for v in client(ws).search_model_versions(f"name='{name}'")}


def chain(versions: dict[str, Any], version: str) -> list[str]:
    """``version``, its parent, its parent's parent, … by the ``parent_version`` tags in ``versions``
    (:func:`versions_by_number`)."""
    found: list[str] = []
    while version and version in versions and version not in found:
        found.append(version)
        version = versions[version].tags.get(TAG_PREFIX + "parent_version")
    return found


def lineage_problems(versions: dict[str, Any], version: str, champion: str) -> list[str]:
    """Why ``version`` does not carry every deletion made since ``champion`` ([] when it does): the champion
    must be among its ancestors and every version in between certified (deletions accumulate along that
    chain, see :func:`batch_parent`)."""
    line = chain(versions, version)
    if champion not in line:
        path = " → ".join(f"v{v}" for v in line)
        return [f"the champion v{champion} is not among its ancestors ({path}): promoting it would bring back "
                "data deleted since"]
    status_tag = TAG_PREFIX + "certificate_status"
    return [f"its ancestor v{v} is not certified ({versions[v].tags.get(status_tag)}): the deletions it stands "
            "for are not proven" for v in line[1:line.index(champion)]
            if versions[v].tags.get(status_tag) != "certified"]


def batch_parent(ws: Workspace) -> str | None:
    """The version a new deletion batch unlearns from: the newest certified version that descends from the
    champion through certified versions — its deletions are not promoted yet, and a version made from the
    champion instead would bring them back once promoted — else the ``champion`` (None before training)."""
    champion = resolve_version(ws, "champion")
    if champion is None:
        return None
    versions = versions_by_number(ws)
    status_tag = TAG_PREFIX + "certificate_status"
    chained = [v for v, mv in versions.items() if v != champion and mv.tags.get(status_tag) == "certified"
               and mv.tags.get(TAG_PREFIX + "purged") != "true" and not lineage_problems(versions, v, champion)]
    return max(chained, key=int, default=champion)


def download_run_artifact(ws: Workspace, run_id: str, path: str, destination: Path) -> Path:
    import mlflow

    client(ws)
    destination.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(destination)))
