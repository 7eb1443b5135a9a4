"""The Python API: the CLI's workflow for notebooks and other orchestrators.

::

    from unlearnops import api

    ws = api.init("my-project", model_factory="mymodel:Net", train_function="mymodel:train",
                  adapter="tabular", options={"path": "data.csv"}, python_path=["."])
    api.train(ws)                                  # or api.import_model(ws, weights="net.pt")
    api.submit(ws, subjects=["alice"])
    summary = api.run(ws)                          # one Prefect run of the deletion flow
    api.promote(ws, check=True)
    api.status(ws)

Every function takes a :class:`~unlearnops.workspace.Workspace` or a path to one and returns plain data
(the same JSON documents the CLI prints with ``--json``). Errors are exceptions: ``ConfigError`` for bad
settings, ``RequestRejected`` for bad requests, ``PromotionError`` for promotion errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pydantic import ValidationError

if TYPE_CHECKING:  # pandas-heavy: imported only where a dataset is built (fast `status`)
    from unlearnops.datasets import SourceData
from unlearnops.workspace import CONFIG_FILE, ConfigError, Settings, Workspace, load_settings, validation_message

WorkspaceLike = Workspace | str | Path


def __getattr__(name: str):
    """``api.SourceData`` (in-memory arrays for :func:`init`) without importing pandas when api is imported."""
    if name == "SourceData":
        from unlearnops.datasets import SourceData

        return SourceData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def workspace(ws: WorkspaceLike | None = None) -> Workspace:
    """A :class:`Workspace` from a path (or ``UNLEARNOPS_WORKSPACE``), activated for this process."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    ws.activate()
    return ws


def project_settings(
    directory: Path,
    *,
    model_name: str | None = None,
    model_factory: str | None = None,
    train_function: str | None = None,
    python_path: Sequence[str] | None = None,
    adapter: str | None = None,
    options: dict[str, Any] | None = None,
) -> Settings:
    """The settings ``init`` will write: an ``unlearnops.toml`` already in ``directory`` (else the
    defaults), with the given values replacing the file's. Invalid values raise :class:`ConfigError`."""
    config_path = Path(directory) / CONFIG_FILE
    base = load_settings(config_path) if config_path.is_file() else Settings()
    values = base.model_dump()
    for section, key, value in (
        ("project", "model_name", model_name),
        ("project", "model_factory", model_factory),
        ("project", "train_function", train_function),
        ("project", "python_path", None if python_path is None else list(python_path)),
        ("data", "adapter", adapter),
        ("data", "options", options),
    ):
        if value is not None:
            values[section][key] = value
    if adapter is not None and options is None and adapter != base.data.adapter:
        values["data"]["options"] = {}
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(validation_message(config_path, exc)) from exc


def init(
    directory: WorkspaceLike | None = None,
    *,
    model_name: str | None = None,
    model_factory: str | None = None,
    train_function: str | None = None,
    python_path: Sequence[str] | None = None,
    adapter: str | None = None,
    options: dict[str, Any] | None = None,
    epochs: int | None = None,
    limit: int | None = None,
    arrays: SourceData | None = None,
) -> Workspace:
    """Create a workspace (git + DVC, settings, keys, dataset version 1) after checking the project.

    ``arrays`` builds version 1 from in-memory numpy arrays or torch tensors instead of an adapter (the
    settings then record ``data.adapter = "arrays"`` without options). A workspace that already exists
    is returned unchanged.
    """
    from unlearnops.project import init_workspace
    from unlearnops.workspace import Params

    ws = directory if isinstance(directory, Workspace) else Workspace(directory)
    if ws.exists() and (ws.root / "data.dvc").is_file():
        ws.activate()
        return ws
    if arrays is not None:
        adapter, options = "arrays", {}
    settings = project_settings(
        ws.root, model_name=model_name, model_factory=model_factory, train_function=train_function,
        python_path=python_path, adapter=adapter, options=options,
    )
    params = None
    if epochs is not None:
        params = ws.params if (ws.root / "params.yaml").is_file() else Params()
        params.train.epochs = epochs
    init_workspace(ws, settings=settings, params=params, limit=limit, source=arrays)
    return workspace(ws)


def train(ws: WorkspaceLike | None = None) -> str:
    """``dvc repro`` the base model and register it as version 1, alias ``champion`` (once); its version."""
    from unlearnops.project import train_base

    result = train_base(workspace(ws))
    return result if isinstance(result, str) else result.version


def import_model(
    ws: WorkspaceLike | None = None,
    *,
    weights: str | Path | None = None,
    model_uri: str | None = None,
    source_tracking_uri: str | None = None,
) -> str:
    """Register an already trained model (state-dict file or MLflow URI) as the starting champion."""
    from unlearnops.project import import_base

    result = import_base(workspace(ws), weights=None if weights is None else Path(weights), model_uri=model_uri,
                         source_tracking_uri=source_tracking_uri)
    return result if isinstance(result, str) else result.version


def submit(
    ws: WorkspaceLike | None = None,
    *,
    subjects: Sequence[str] = (),
    samples: Sequence[str] = (),
    hashes: Sequence[str] = (),
    reason: str = "erasure",
    policy: str = "exact",
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Validate and store a deletion request; its receipt (``id``, ``state``, ``created``, due date).
    ``RequestRejected`` for a bad request, ``IdempotencyConflict`` for a key used for another request."""
    from unlearnops.intake import receipt
    from unlearnops.intake import submit as submit_request

    stored, created = submit_request(workspace(ws), {
        "subject_ids": list(subjects), "sample_ids": list(samples), "content_sha256": list(hashes),
        "reason": reason, "policy": policy, "idempotency_key": idempotency_key,
    })
    return receipt(stored, created)


def show_request(ws: WorkspaceLike | None, request_id: str) -> dict[str, Any]:
    """One stored request as ``request show`` prints it (``KeyError`` for an unknown id)."""
    from unlearnops.requests import RequestStore

    return RequestStore(workspace(ws).requests_db).get(request_id).view()


def import_requests(ws: WorkspaceLike | None, directory: Path) -> list[dict[str, Any]]:
    """Take in a drop directory of request files (``request import``): one result per file."""
    from unlearnops.intake import import_directory

    return import_directory(workspace(ws), Path(directory))


def run(
    ws: WorkspaceLike | None = None,
    *,
    method: str | None = None,
    config: dict[str, Any] | None = None,
    device: str | None = None,
    prefect: bool = True,
    wait: float = 0.0,
) -> dict[str, Any] | None:
    """Process every pending request in one run (a Prefect flow run unless ``prefect=False``); the run's
    summary, None when nothing was pending, or ``{"skipped": reason}`` when another run holds the workspace.
    A missing method or an invalid config for any rung of any request kind's ladder (or for ``method``) is
    a ``PluginError`` before anything is touched."""
    from unlearnops.durable import WorkspaceBusy
    from unlearnops.flow.unlearn import validated_ladder

    ws = workspace(ws)
    validated_ladder(ws, None, method, config or None)
    if not prefect:
        from unlearnops.flow.run import process_pending, summary

        try:
            batch = process_pending(ws, method, config or None, device, wait=wait)
        except WorkspaceBusy as exc:
            return {"skipped": str(exc)}
        return None if batch is None else with_obligations(ws, summary(batch))
    from unlearnops.pipelines.deletion import deletion_flow

    return with_obligations(ws, deletion_flow(str(ws.root), method=method, method_config=config or None,
                                              device=device, wait=wait))


def with_obligations(ws: Workspace, summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run's summary plus every request still open (state, versions, reasons, days left) and the ids of
    the overdue ones (``requests_open``, ``overdue``)."""
    from unlearnops.requests import OPEN_STATES, RequestStore

    if not summary or "run_id" not in summary:
        return summary
    still_open = RequestStore(ws.requests_db).list(OPEN_STATES)
    summary["requests_open"] = [
        {"id": r.id, "state": r.state, "model_version": r.model_version, "certified_version": r.certified_version,
         "reasons": r.reasons or ([r.error] if r.error else []), "days_left": r.days_left()} for r in still_open]
    summary["overdue"] = [r.id for r in still_open if r.overdue()]
    return summary


def list_requests(ws: WorkspaceLike | None = None) -> list[dict[str, Any]]:
    """Every stored request with its state, ``days_left`` and ``overdue`` (``unlearnops request list``)."""
    from unlearnops.obligations import settle_legacy
    from unlearnops.requests import RequestStore

    ws = workspace(ws)
    settle_legacy(ws)
    return [r.view() for r in RequestStore(ws.requests_db).list()]


def request_receipt(ws: WorkspaceLike | None, request_id: str) -> dict[str, Any]:
    """The signed receipt of a forgotten request (``unlearnops request receipt``); ``ReceiptRefused`` while
    it is open. Verify it with :func:`unlearnops.certificate.verify` and the workspace's public key."""
    from unlearnops.obligations import receipt

    return receipt(workspace(ws), request_id)


def reject(ws: WorkspaceLike | None, request_id: str, reason: str, wait: float = 30.0):
    """An operator rejects a waiting request (``unlearnops request reject``); the stored request. Holds the
    workspace lock, so no run opens a batch over the request meanwhile; a request that is part of an
    unfinished batch (its samples may already be cut from the dataset) cannot be rejected, nor a processed
    one (``TransitionRefused``); rejecting a rejected request again changes nothing. ``KeyError`` for an
    unknown id, ``WorkspaceBusy`` when a run holds the workspace longer than ``wait`` seconds."""
    from unlearnops.durable import workspace_lock
    from unlearnops.flow.batch import open_batches
    from unlearnops.requests import RequestStore, TransitionRefused

    ws = workspace(ws)
    with workspace_lock(ws.state_dir, wait=wait, purpose="request reject"):
        store = RequestStore(ws.requests_db)
        stored = store.get(request_id)
        for batch in open_batches(ws):
            if request_id in batch.request_ids and stored.state != "rejected":
                raise TransitionRefused(
                    f"request {request_id} is part of the unfinished batch {batch.run_id} (its samples may "
                    "already be cut from the dataset): the next run completes it"
                )
        return store.mark_rejected(request_id, reason)


def review_candidates(ws: WorkspaceLike | None, request, request_id: str | None = None) -> dict[str, Any]:
    """What ``request`` (a parsed :class:`~unlearnops.requests.DeletionRequest`) would delete, found by the
    workspace's configured locators with the champion model (``unlearnops locate --dry-run``): every
    candidate with the locator that found it and its score, the targets not in the dataset, the locators'
    notes. Changes nothing."""
    import time

    from unlearnops import data, model_registry
    from unlearnops.flow.locate import count_by_locator, locate_with_settings, min_scores
    from unlearnops.locate import read_manifest, unmatched_targets

    ws = workspace(ws)
    started = time.perf_counter()
    champion = model_registry.resolve_version(ws, "champion")
    table = read_manifest(ws.data_dir / data.MANIFEST_FILE)
    located, locators, settings = locate_with_settings(ws, [request], champion, table)
    records = located.records([request_id or "ad-hoc"])
    return {
        "request": request_id, "policy": request.policy, "dry_run": True, "model_version": champion,
        "locators": [loc.name for loc in locators if loc.kind == "exact" or request.policy == "expand"],
        "min_score": min_scores(settings, locators),
        "n_candidates": len({r["sample_id"] for r in records}), "by_locator": count_by_locator(records),
        "unmatched": unmatched_targets(request, table), "notes": located.notes, "candidates": records,
        "seconds": round(time.perf_counter() - started, 3),
    }


def promote(ws: WorkspaceLike | None = None, version: str | None = None, check: bool = False) -> dict[str, Any]:
    """Verify a candidate and move ``champion`` to it (``check``: decide only); the decision."""
    from unlearnops.promote import promote as promote_version

    return promote_version(workspace(ws), version, check_only=check).to_dict()


def audit(ws: WorkspaceLike | None, version: str, references: int = 4,
          device: str | None = None, wait: float = 60.0) -> dict[str, Any]:
    """Audit ``version`` with offline LiRA and RMIA (``unlearnops audit``); the signed audit record
    (``AuditRefused`` when the version cannot be audited)."""
    from unlearnops.audit import audit_version

    return audit_version(workspace(ws), version, references=references, device=device, wait=wait)


def references_train(ws: WorkspaceLike | None = None, k: int | None = None, device: str | None = None,
                     wait: float = 60.0, progress=None) -> dict[str, Any]:
    """Top the retrain-equivalence reference pool up to ``k`` valid models (``unlearnops references train``);
    ``ReferencePoolRefused`` for a bad ``k``. ``progress``: :func:`unlearnops.progress.model_progress`."""
    from unlearnops.audit import train_pool

    ws = workspace(ws)
    if progress is None:
        from unlearnops.progress import model_progress

        progress = model_progress("references", ws.params.train.epochs)
    return train_pool(ws, k=k, device=device, wait=wait, progress=progress)


def references_status(ws: WorkspaceLike | None = None, k: int | None = None) -> dict[str, Any]:
    """The reference pool against the current dataset: valid / stale / missing per reference and per part,
    seconds spent (``unlearnops references status``)."""
    from unlearnops.audit import MAX_REFERENCES, ReferencePoolRefused, pool_status

    if k is not None and not 1 <= k <= MAX_REFERENCES:
        raise ReferencePoolRefused(f"k must be between 1 and {MAX_REFERENCES}, got {k}")
    return pool_status(workspace(ws), k)


def _registry_from_mlflow(ws: Workspace, name: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """``(aliases, versions)`` of ``name`` through MLflow's client (any tracking backend)."""
    from mlflow.exceptions import MlflowException

    from unlearnops import model_registry

    client = model_registry.client(ws)
    try:
        aliases = client.get_registered_model(name).aliases  # search results may omit aliases
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException:  # nothing registered yet
        return {}, []
    return ({a: str(v) for a, v in aliases.items()},
            [{"version": str(mv.version), "tags": dict(mv.tags), "created": mv.creation_timestamp}
             for mv in sorted(found, key=lambda v: int(v.version))])


def status(ws: WorkspaceLike | None = None) -> dict[str, Any]:
    """The workspace at a glance: dataset version, model versions with aliases and lineage, requests by state,
    open requests with their days left, the overdue ones, and what ``dvc status`` reports."""
    from unlearnops import data, model_registry
    from unlearnops.dvc_state import pipeline_state
    from unlearnops.requests import RequestStore

    ws = workspace(ws)
    name = ws.settings.project.model_name
    snapshot = None
    if ws.tracking_uri == f"sqlite:///{ws.mlflow_db}":  # the workspace's own registry: read without mlflow
        from unlearnops.registry_snapshot import read_registry

        snapshot = read_registry(ws.mlflow_db, name)
    if snapshot is None:
        snapshot = _registry_from_mlflow(ws, name)
    aliases, found = snapshot
    versions = []
    for mv in found:
        tags = {k.removeprefix(model_registry.TAG_PREFIX): v for k, v in mv["tags"].items()
                if k.startswith(model_registry.TAG_PREFIX)}
        versions.append({
            "version": mv["version"],
            "aliases": sorted(a for a, v in aliases.items() if v == mv["version"]),
            "certificate_status": tags.get("certificate_status", ""),
            "parent_version": tags.get("parent_version", ""),
            "method": tags.get("method", tags.get("kind", "")),
            "dataset_rev": tags.get("dataset_rev", ""),
            "tainted": tags.get("tainted") == "true",
            "created": mv["created"],
        })
    from unlearnops.obligations import settle_legacy

    settle_legacy(ws)
    requests: dict[str, int] = {}
    still_open = []
    for stored in RequestStore(ws.requests_db).list():
        requests[stored.state] = requests.get(stored.state, 0) + 1
        if stored.open:
            still_open.append({"id": stored.id, "state": stored.state, "due_at": stored.due_at,
                               "days_left": stored.days_left(), "overdue": stored.overdue()})
    dataset = data.current_version(ws)
    return {
        "workspace": str(ws.root),
        "model_name": name,
        "tracking_uri": ws.tracking_uri,
        "dataset": dataset.to_dict(),
        "versions": versions,
        "requests": requests,
        "open_requests": still_open,
        "overdue": [r["id"] for r in still_open if r["overdue"]],
        "dvc_pipeline": pipeline_state(ws.root),
    }


def public_key(ws: WorkspaceLike | None = None) -> dict[str, Any]:
    """The public signing key to hand to verifiers: ``pem``, ``fingerprint`` (the hex that certificates name
    in ``signature.public_key``) and ``path``. Never creates a key."""
    from unlearnops.certificate import public_key_fingerprint
    from unlearnops.keys import PUBLIC_KEY_FILE, public_key_pem, read_public_key

    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    path = ws.keys_dir / PUBLIC_KEY_FILE
    return {"pem": public_key_pem(ws), "fingerprint": public_key_fingerprint(read_public_key(path)), "path": str(path)}


def verify_certificate_file(certificate: str | Path, public_key_file: str | Path) -> dict[str, Any]:
    """Verify a certificate file's signature with a public key file alone (no workspace, no registry):
    ``{"ok", "certificate", "schema", "status", "fingerprint", "problem"}``."""
    from unlearnops.certificate import CertificateError, public_key_fingerprint, read, verify
    from unlearnops.keys import read_public_key

    result: dict[str, Any] = {"ok": False, "certificate": str(certificate), "schema": None, "status": None,
                              "fingerprint": None, "problem": None}
    try:
        key = read_public_key(Path(public_key_file))
        result["fingerprint"] = public_key_fingerprint(key)
        document = read(Path(certificate))
        if isinstance(document, dict):
            result["schema"], result["status"] = document.get("schema"), document.get("status")
        verify(document, key)
        result["ok"] = True
    except CertificateError as exc:
        result["problem"] = str(exc)
    return result


def verify(ws: WorkspaceLike | None, version: str) -> dict[str, Any]:
    """``certificate verify VERSION``: signature, every hash and lineage tag, purge records; the result."""
    from unlearnops.verification import verify_version

    return verify_version(workspace(ws), version).to_dict()


def explain(ws: WorkspaceLike | None, version: str, plots_dir: Path | None = None) -> dict[str, Any]:
    """``explain VERSION``: which rungs ran, why each stopped, the fast path's candidates and search."""
    from unlearnops.explain import explain as explain_version

    return explain_version(workspace(ws), version, plots_dir)


def purge(ws: WorkspaceLike | None = None, dry_run: bool = False, wait: float = 60.0) -> dict[str, Any]:
    """``purge``: remove the deleted samples' bytes from every store (the purge report)."""
    from unlearnops.purge import purge as run_purge

    return run_purge(workspace(ws), dry_run=dry_run, wait=wait).to_dict()


def plugins() -> dict[str, Any]:
    """Every registered plugin (kind, name, version, source, the plugin object) and every load error."""
    from unlearnops.plugin_manager import load_plugins

    loaded = load_plugins()
    return {"entries": [e for kind in loaded.entries.values() for e in sorted(kind.values(), key=lambda e: e.name)],
            "errors": list(loaded.errors)}


def new_plugin(name: str, directory: Path | None = None) -> Path:
    """``plugins new NAME``: write a ready plugin package; its directory."""
    from unlearnops.kit import new_plugin as write_plugin

    return write_plugin(name, directory)
