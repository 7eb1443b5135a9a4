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


def local_registry(ws: Workspace):
    """The workspace's own embedded registry (sqlite in ``.unlearnops/``, file artifacts), read without
    importing mlflow (:class:`unlearnops.registry_snapshot.LocalRegistry`); None with another tracking URI
    (``UNLEARNOPS_TRACKING_URI``, a server) or a database this cannot read: then MLflow is asked."""
    if ws.tracking_uri != f"sqlite:///{ws.mlflow_db}":
        return None
    from unlearnops.registry_snapshot import LocalRegistry

    return LocalRegistry.open(ws.mlflow_db)


def artifact_errors() -> tuple[type[Exception], ...]:
    """What a missing version, run or artifact raises: OSError (and LookupError) from the local reader,
    MlflowException once mlflow is loaded (it cannot have raised before). Evaluated in ``except`` clauses,
    after the call that raised."""
    import sys

    from unlearnops.registry_snapshot import VersionNotFound

    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    return (OSError, VersionNotFound) + ((mlflow_exceptions.MlflowException,) if mlflow_exceptions else ())


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


#: Run artifacts of every version: the torch weights (safetensors), the ONNX file, and the signed record
#: that binds both hashes to the MLflow run (so bytes copied from another version's run are refused).
WEIGHTS_ARTIFACT = "model.safetensors"
ONNX_ARTIFACT = "model.onnx"
WEIGHTS_RECORD = "weights.json"
WEIGHTS_RECORD_KIND = "unlearnops.weights/v1"


class IntegrityError(ValueError):
    """Registry content does not match what was signed: it is refused before it is deserialized."""


def register_model(
    ws: Workspace,
    weights: Path,
    onnx_file: Path,
    *,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[Path] = (),
    aliases: tuple[str, ...] = (),
    nested_runs: list[dict[str, Any]] = (),
    description: str | None = None,
    datasets: dict[str, dict[str, Any]] | None = None,
) -> RegisteredVersion:
    """Log a new run and register it as the next version of the workspace's model.

    The registered MLflow model is the ONNX file (``mlflow.onnx`` flavor: loadable with
    ``mlflow.pyfunc.load_model`` and onnxruntime alone, no pickle, no unlearnops); the torch weights are the
    safetensors file ``weights`` logged as run artifact ``model.safetensors``; ``weights.json`` is a signed
    record of both hashes and the run id. The version is tagged with ``tags`` (prefixed ``unlearnops.``,
    informational) and ``aliases`` point at it. Each of ``nested_runs`` (``name``, ``params``, ``metrics``,
    ``tags``) becomes a child run, e.g. one per rung of the ladder. ``datasets`` (context -> DVC dataset
    version: ``git_rev``, ``dvc_md5``) are logged as the run's dataset inputs."""
    import shutil
    import tempfile

    import mlflow
    import numpy as np
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    from unlearnops.certificate import sign
    from unlearnops.export import inference_session
    from unlearnops.keys import signing_key
    from unlearnops.durable import file_sha256
    from unlearnops.run_metrics import dataset_input

    mlflow_client = client(ws)
    name = ws.settings.project.model_name
    key = signing_key(ws)
    session = inference_session(onnx_file)
    (spec,) = session.get_inputs()
    # A zero example: the signature needs shape and dtype only, and no sample's values enter the registry.
    example = np.zeros([1, *[int(d) for d in spec.shape[1:]]], dtype=np.float32)
    (example_out, *_) = session.run(None, {spec.name: example})
    onnx_model = onnx.load(str(onnx_file))  # protobuf: data, never code
    with mlflow.start_run(experiment_id=_experiment_id(ws), run_name=run_name) as run, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        mlflow.set_tags({TAG_PREFIX + k: v for k, v in tags.items()})
        for context, dataset in (datasets or {}).items():
            mlflow.log_input(dataset_input(ws.root, dataset), context=context)
        for path in artifacts:
            mlflow.log_artifact(str(path))
        for source, artifact in ((weights, WEIGHTS_ARTIFACT), (onnx_file, ONNX_ARTIFACT)):
            if not any(Path(p).name == artifact for p in artifacts):
                named = Path(tmp) / artifact
                shutil.copyfile(source, named)
                mlflow.log_artifact(str(named))
        for child in nested_runs:
            with mlflow.start_run(experiment_id=run.info.experiment_id, run_name=child["name"], nested=True):
                mlflow.log_params({k: str(v)[:500] for k, v in child.get("params", {}).items()})
                mlflow.log_metrics({k: float(v) for k, v in child.get("metrics", {}).items() if v is not None})
                mlflow.set_tags({TAG_PREFIX + k: str(v)[:5000] for k, v in child.get("tags", {}).items()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.onnx.log_model(
                onnx_model,
                name="model",
                signature=infer_signature(example, example_out),
                input_example=example,
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"onnx=={onnx.__version__}",
                                  f"onnxruntime=={onnxruntime.__version__}"],
                save_as_external_data=False,  # one file, hashed like the run's model.onnx
                registered_model_name=name,
            )
        record = sign({"kind": WEIGHTS_RECORD_KIND, "model_name": name, "mlflow_run_id": run.info.run_id,
                       "weights_sha256": file_sha256(weights), "onnx_sha256": file_sha256(onnx_file),
                       "mlflow_model_onnx_sha256": _logged_onnx_sha256(
                           mlflow_client.get_logged_model(info.model_id).artifact_location, Path(tmp))}, key)
        mlflow.log_dict(record, WEIGHTS_RECORD)
    version = str(info.registered_model_version)
    for tag, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, TAG_PREFIX + tag, value)
    if description:
        mlflow_client.update_model_version(name, version, description=description)
    for alias in aliases:
        mlflow_client.set_registered_model_alias(name, alias, version)
    return RegisteredVersion(name=name, version=version, run_id=run.info.run_id, model_uri=info.model_uri)


def _logged_onnx_sha256(model_location: str, tmp: Path) -> str:
    """The sha256 of the ONNX file inside the logged MLflow model (what ``mlflow.pyfunc`` users load)."""
    import mlflow

    from unlearnops.durable import file_sha256

    return file_sha256(Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{model_location.rstrip('/')}/model.onnx",
                                                                dst_path=str(tmp / "logged"))))


def get_version(ws: Workspace, version: str):
    """Version number ``version`` of the workspace's model: read from the embedded registry without mlflow
    (:class:`unlearnops.registry_snapshot.LocalModelVersion`) or MLflow's ``ModelVersion`` (both have
    ``name``, ``version``, ``run_id``, ``tags``). None missing: :func:`artifact_errors`."""
    local = local_registry(ws)
    if local is not None:
        return local.model_version(ws.settings.project.model_name, version)
    return client(ws).get_model_version(ws.settings.project.model_name, version)


def version_download_uri(ws: Workspace, model_version) -> str:
    """The artifact location of the MLflow model a version registers (``get_model_version_download_uri``)."""
    uri = getattr(model_version, "download_uri", None)
    if uri is None:
        uri = client(ws).get_model_version_download_uri(model_version.name, model_version.version)
    return uri.rstrip("/")


def model_version(ws: Workspace, alias_or_version: str):
    """The MLflow ``ModelVersion`` named by an alias (``champion``) or a version number."""
    mlflow_client = client(ws)
    name = ws.settings.project.model_name
    if alias_or_version.isdigit():
        return mlflow_client.get_model_version(name, alias_or_version)
    return mlflow_client.get_model_version_by_alias(name, alias_or_version)


def signed_record(ws: Workspace, run_id: str, artifact: str, kind: str | None = None) -> dict | None:
    """The run artifact ``artifact`` (JSON) when it is signed by this workspace's key and bound to ``run_id``
    (and of schema ``kind`` when given); None when the run has no such artifact. A record that is present
    but unsigned, re-signed with another key, edited, or copied from another run is an IntegrityError."""
    import json
    import tempfile

    from unlearnops.certificate import CertificateError, verify
    from unlearnops.keys import public_key

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_run_artifact(ws, run_id, artifact, Path(tmp))
        except artifact_errors():
            return None
        try:
            record = json.loads(path.read_bytes())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            verify(record, public_key(ws))
        except (ValueError, CertificateError) as exc:
            raise IntegrityError(f"{artifact} of run {run_id} is not a valid signed record: {exc}") from exc
    if record.get("mlflow_run_id") != run_id or (kind and record.get("kind") != kind):
        raise IntegrityError(f"{artifact} of run {run_id} was signed for another run or purpose")
    return record


def verified_artifact(ws: Workspace, run_id: str, artifact: str, sha256: str | None) -> bytes:
    """The bytes of run artifact ``artifact``, downloaded and checked against ``sha256`` (from a signed
    record) before anyone deserializes them; IntegrityError when missing, unhashed or different."""
    import hashlib
    import tempfile

    if not sha256:
        raise IntegrityError(f"no signed sha256 for {artifact} of run {run_id}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            data = download_run_artifact(ws, run_id, artifact, Path(tmp)).read_bytes()
        except artifact_errors() as exc:
            raise IntegrityError(f"{artifact} of run {run_id} is missing: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"{artifact} of run {run_id} differs from the signed sha256")
    return data


def load_model(ws: Workspace, alias_or_version: str = "champion"):
    """The torch model of a version (alias ``champion`` or a number): its safetensors weights, checked
    against the signed weights record before they are read, in a model built by the workspace's factory.
    Nothing from the registry is unpickled."""
    from unlearnops.model import model_from_bytes

    mv = model_version(ws, alias_or_version)
    record = signed_record(ws, mv.run_id, WEIGHTS_RECORD, WEIGHTS_RECORD_KIND)
    if record is None:
        raise IntegrityError(f"version {mv.version} has no signed {WEIGHTS_RECORD}: its weights are not trusted")
    data = verified_artifact(ws, mv.run_id, WEIGHTS_ARTIFACT, record.get("weights_sha256"))
    return model_from_bytes(ws.model_factory, data)


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
    champion instead would bring them back once promoted — else the ``champion`` (None before training).
    Decided on signed records only: a version counts when its certificate verifies, says "certified", every
    lineage tag matches it and it has no signed purge record (tags alone decide nothing)."""
    from unlearnops.verification import verify_version

    champion = resolve_version(ws, "champion")
    if champion is None:
        return None
    versions = versions_by_number(ws)
    checked: dict[str, bool] = {}

    def trusted(v: str) -> bool:
        if v not in checked:
            result = verify_version(ws, v, files=False)
            checked[v] = result.ok and result.status == "certified" and not result.purged
        return checked[v]

    for v in sorted((v for v in versions if int(v) > int(champion)), key=int, reverse=True):
        line = chain(versions, v)
        if champion in line and all(trusted(a) for a in line[:line.index(champion)]):
            return v
    return champion


def download_run_artifact(ws: Workspace, run_id: str, path: str, destination: Path) -> Path:
    """Run artifact ``path`` of ``run_id``, copied under ``destination``."""
    return download_artifact(ws, f"runs:/{run_id}/{path}", destination)


def download_artifact(ws: Workspace, uri: str, destination: Path) -> Path:
    """The artifact at ``uri`` (``runs:/RUN_ID/PATH`` or an artifact location), copied under ``destination``:
    straight from the file store of the workspace's embedded registry (no mlflow import), else by MLflow.
    A missing artifact is an OSError (local) or MlflowException."""
    destination.mkdir(parents=True, exist_ok=True)
    local = local_registry(ws)
    source = local.artifact_path(uri) if local is not None else None
    if source is not None:
        import shutil

        return Path(shutil.copyfile(source, destination / source.name))
    import mlflow

    client(ws)
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(destination)))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
