"""Purge: once a successor is promoted, the deleted samples' bytes leave every store of the workspace.

What holds the bytes of a deleted sample after its deletion batch, and what purge does with it:

* **DVC cache and remote** (``.dvc/cache/files``, the workspace remote): the objects of every dataset
  version that still contained the sample (``features.npy``, ``manifest.parquet`` and the ``.dir`` listing
  of ``data/``), and the outputs of pipeline stages computed from such a version (``prepared/*.npz``,
  ``models/base.pt``, found by following the dependency hashes recorded in every ``dvc.lock``). Removed.
* **DVC run cache** (``.dvc/cache/runs``, and ``runs/`` on the remote): entries that record those hashes
  as dependencies or outputs (they would let ``dvc repro`` restore the old outputs). Removed.
* **Workspace files**: stage outputs named in the workspace's ``dvc.lock`` that were computed from a dirty
  version (``prepared/``, ``models/base.pt``). Removed; ``dvc repro`` rebuilds them from the current version.
* **Model weights** of every version that does not descend from the champion: its ancestors (tainted by
  the promotion) and versions unlearned from one of them that were never promoted (they still carry what
  the champion's lineage deleted). The weight files of the MLflow logged model, the ONNX run artifact, and
  the copies in ``.unlearnops/runs/<run>/`` are removed; the certificate, report, metrics, params and tags
  stay for audit, a signed purge record (``purge.json``, Ed25519 like certificates) is logged to the
  version's run, and the version is tagged ``unlearnops.purged=true`` (informational; verification,
  promotion and serving read the signed record) and tainted, if it was not.
* **Audit reference models** (``.unlearnops/audit/refs/``, :mod:`unlearnops.audit`) trained on a sample the
  current dataset no longer holds. Removed (weights and their id list).
* **Git**: DVC keeps data out of git (``data.dvc`` and ``dvc.lock`` hold hashes only). Purge checks every
  commit for a file under a DVC-tracked path (``data/``, stage outputs); it does not rewrite history, so
  such a file is reported as ``git_history`` and the purge exits 1 (rewrite it with ``git filter-repo``).

Why not ``dvc gc``: ``gc --workspace`` keeps everything the workspace's ``dvc.lock`` names — the prepared
splits and base model of dataset version 1, which hold the deleted samples — and never touches the run
cache; ``gc --rev/--num`` keeps by commit count, not by lineage, and removes unrelated tracked data of old
revisions too. Purge instead removes exactly the content-addressed objects that hold deleted data.

Which data is purged: the lineage of the champion (the champion, its parent, …) is the set of versions in
production's past; a forgotten request (its certified version is in that lineage) is fully effective, so every
dataset version before the champion's (the git commits that are not descendants of the champion's
``dataset_rev``) is dirty. Versions after it are kept (their deletions wait for a promotion). Objects that
a kept revision also uses are never removed.

Open obligations (purge's rule): purge never destroys what an open request still needs. Requests cut from
the dataset but not yet forgotten keep their samples' copy in ``.unlearnops/runs/<run>/forget.npz`` (purge
never removes it; the flow deletes it once a certified version covers them) and are listed as
``waiting_requests``. When such a copy is already gone (a workspace from before obligation states), purge
refuses and names the requests: only an exact method (``unlearnops run --method retrain``) can still forget
them, and that must happen before older dataset versions go. After removing the bytes, purge replaces any
raw subject id left in the request store (forgotten or rejected requests) by its keyed hash, compacts the
store so no old page keeps it, and records on each forgotten request what it cleaned (its receipt shows it).

Purge holds the workspace lock, is idempotent (the plan comes from git and the registry, not from what is
left in the stores, so a re-run after a crash finishes the work and a second purge removes nothing), and
refuses when no successor has been promoted or a deletion batch is unfinished.
"""

from __future__ import annotations

import itertools
import json
import shutil
from contextlib import chdir
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unlearnops import model_registry
from unlearnops.clock import utc_now
from unlearnops.data import git
from unlearnops.durable import atomic_write_text, workspace_lock
from unlearnops.progress import step_progress
from unlearnops.requests import RequestStore
from unlearnops.workspace import Workspace

PURGED_TAG = model_registry.TAG_PREFIX + "purged"
DATASET_FILE = "data.dvc"
LOCK_FILE = "dvc.lock"
#: Files of an MLflow logged model that describe it (kept); everything else in it is weights (removed).
MODEL_METADATA = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "registered_model_meta"}
#: Run artifacts and run-directory files that hold weights (plus every registered exporter's suffix).
WEIGHT_SUFFIXES = (".onnx", ".onnx.data", ".safetensors", ".pt", ".pth")


def weight_suffixes() -> tuple[str, ...]:
    """:data:`WEIGHT_SUFFIXES` and the file suffix of every registered exporter (exported models are weights)."""
    from unlearnops.plugin_manager import load_plugins

    exporters = load_plugins().entries["exporter"].values()
    return tuple(dict.fromkeys([*WEIGHT_SUFFIXES, *(e.obj.suffix for e in exporters)]))


class PurgeRefused(RuntimeError):
    """Purge cannot run yet (no successor promoted, an unfinished batch); nothing was changed."""


@dataclass
class Item:
    """One thing purge removes: where (store), what (path or URI) and how many bytes."""

    store: str
    path: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "path": self.path, "bytes": self.bytes}


@dataclass
class PurgeReport:
    dry_run: bool
    champion: str
    lineage: list[str]
    requests: list[str] = field(default_factory=list)
    waiting_requests: list[str] = field(default_factory=list)
    kept_revisions: list[str] = field(default_factory=list)
    dirty_revisions: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    model_versions: list[str] = field(default_factory=list)
    git_history: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Nothing of the deleted data is left that purge knows of (git history aside, it never is)."""
        return not self.git_history

    def totals(self) -> dict[str, dict[str, int]]:
        totals: dict[str, dict[str, int]] = {}
        for item in self.items:
            entry = totals.setdefault(item.store, {"count": 0, "bytes": 0})
            entry["count"] += 1
            entry["bytes"] += item.bytes
        return totals

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "complete": self.complete,
            "champion": self.champion,
            "lineage": self.lineage,
            "requests": self.requests,
            "waiting_requests": self.waiting_requests,
            "kept_revisions": self.kept_revisions,
            "dirty_revisions": self.dirty_revisions,
            "model_versions": self.model_versions,
            ("would_remove" if self.dry_run else "removed"): self.totals(),
            "removed_count": len(self.items),
            "removed_bytes": sum(i.bytes for i in self.items),
            "items": [i.to_dict() for i in self.items],
            "git_history": self.git_history,
            "warnings": self.warnings,
        }


# -- what is dirty ---------------------------------------------------------------------------------------


def _yaml_at(ws: Workspace, rev: str | None, path: str) -> dict | None:
    """A YAML file of the workspace at a git revision (None: the working tree); None when absent."""
    if rev is None:
        file = ws.root / path
        return yaml.safe_load(file.read_text()) if file.is_file() else None
    try:
        return yaml.safe_load(git(ws.root, "show", f"{rev}:{path}"))
    except Exception:  # absent at that revision
        return None


def _dataset_md5(meta: dict | None) -> str | None:
    return ((meta or {}).get("outs") or [{}])[0].get("md5")


def _stage_hashes(lock: dict | None) -> list[tuple[set[str], list[tuple[str, str]]]]:
    """(dependency md5s, [(out path, out md5)]) of every stage of a ``dvc.lock``."""
    stages = []
    for stage in ((lock or {}).get("stages") or {}).values():
        deps = {d["md5"] for d in stage.get("deps") or [] if d.get("md5")}
        outs = [(o["path"], o["md5"]) for o in stage.get("outs") or [] if o.get("md5")]
        stages.append((deps, outs))
    return stages


def _tracked_paths(ws: Workspace) -> list[str]:
    """Paths whose content DVC tracks (and git must not hold): the dataset and cached stage outputs."""
    paths = [o["path"] for o in (_yaml_at(ws, None, DATASET_FILE) or {}).get("outs") or []]
    for stage in ((_yaml_at(ws, None, "dvc.yaml") or {}).get("stages") or {}).values():
        for out in stage.get("outs") or []:
            name, options = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if (options or {}).get("cache", True):
                paths.append(name)
    return [p.rstrip("/") for p in paths]


class _Stores:
    """The DVC cache, the default remote, and their run caches."""

    def __init__(self, repo):
        self.cache = repo.cache.local
        self.run_cache = Path(repo.stage_cache.cache_dir)
        self.remote = None
        self.remote_runs = None
        try:
            self.remote = repo.cloud.get_remote_odb(None, "purge", hash_name="md5")
            remote = repo.cloud.get_remote(None, "purge")
            self.remote_runs = (remote.fs, remote.fs.join(remote.path, "runs"))
        except Exception:  # no remote configured
            pass

    def odbs(self):
        return [("dvc-cache", self.cache)] + ([("dvc-remote", self.remote)] if self.remote else [])

    def read_dir(self, md5: str) -> list[str] | None:
        """The file md5s a ``.dir`` object lists, from the cache or the remote (None: in neither)."""
        for _, odb in self.odbs():
            path = odb.oid_to_path(md5)
            if odb.fs.exists(path):
                with odb.fs.open(path, "r") as fh:
                    return [entry["md5"] for entry in json.load(fh)]
        return None


def _expand(stores: _Stores, md5s: set[str], missing: list[str]) -> set[str]:
    objects = set()
    for md5 in md5s:
        objects.add(md5)
        if md5.endswith(".dir"):
            entries = stores.read_dir(md5)
            if entries is None:
                missing.append(md5)
            else:
                objects.update(entries)
    return objects


# -- the plan -----------------------------------------------------------------------------------------------


def plan(ws: Workspace, dry_run: bool = True) -> tuple[PurgeReport, list[tuple[str, Any, str]], list]:
    """Decide what to purge without changing anything. Returns the report (items listed, nothing removed
    yet), the DVC removals ``(store, fs, path)`` in a safe order (files before ``.dir`` listings), and the
    MLflow removals. :class:`PurgeRefused` when purging is not allowed yet."""
    from dvc.repo import Repo

    from unlearnops.flow.batch import Batch, open_batches

    client = model_registry.client(ws)
    name = ws.settings.project.model_name
    champion = model_registry.resolve_version(ws, "champion")
    if champion is None:
        raise PurgeRefused("no champion model: nothing was trained, nothing to purge")
    unfinished = open_batches(ws)
    if unfinished:
        raise PurgeRefused(f"the deletion batch {unfinished[0].run_id} is unfinished: finish it with "
                           "`unlearnops run` first")
    versions = model_registry.versions_by_number(ws)
    lineage = model_registry.chain(versions, champion)
    from unlearnops.obligations import cut_obligations, missing_forget_copies, settle_legacy

    settle_legacy(ws)
    forgotten = RequestStore(ws.requests_db).list(("forgotten",))
    purged_requests = [r.id for r in forgotten if r.certified_version in lineage]
    if not purged_requests:
        raise PurgeRefused(
            f"no successor has been promoted: the champion v{champion} descends from no version that "
            "forgot a deletion request, so the deleted samples' bytes must stay until one is promoted "
            "(`unlearnops promote`)"
        )
    lost = missing_forget_copies(ws)
    if lost:
        raise PurgeRefused(
            f"open requests {', '.join(r.id for r in lost)} are cut from the dataset but not forgotten, and their "
            "samples' copy in the run directory is gone: older dataset versions are the last place their data "
            "is, so purge keeps them until a certified exact method forgets them (`unlearnops run --method "
            "retrain`, then `unlearnops promote`)"
        )
    waiting = cut_obligations(ws)
    report = PurgeReport(dry_run=dry_run, champion=champion, lineage=lineage, requests=purged_requests,
                         waiting_requests=[r.id for r in waiting])
    if waiting:
        report.warnings.append(f"{len(waiting)} open requests wait for a certified version; their samples' "
                               "copies in .unlearnops/runs/ are kept until one forgets them")

    # Dataset revisions: the champion's and its descendants are kept, every other commit is dirty.
    boundary = versions[champion].tags.get(model_registry.TAG_PREFIX + "dataset_rev")
    if not boundary:
        raise PurgeRefused(f"the champion v{champion} has no dataset_rev tag: cannot tell what is deleted")
    boundary = git(ws.root, "rev-parse", f"{boundary}^{{commit}}")
    commits = git(ws.root, "rev-list", "--all").split()
    kept = {boundary, *git(ws.root, "rev-list", "--ancestry-path", "--all", f"^{boundary}").split()}
    dirty_commits = [c for c in commits if c not in kept]
    report.kept_revisions = [c for c in commits if c in kept]
    report.dirty_revisions = dirty_commits

    kept_data = {_dataset_md5(_yaml_at(ws, c, DATASET_FILE)) for c in kept} | {
        _dataset_md5(_yaml_at(ws, None, DATASET_FILE))}
    kept_data.discard(None)
    dirty = {_dataset_md5(_yaml_at(ws, c, DATASET_FILE)) for c in dirty_commits} - kept_data - {None}
    kept_locks = [_stage_hashes(_yaml_at(ws, c, LOCK_FILE)) for c in kept]
    workspace_lock_stages = _stage_hashes(_yaml_at(ws, None, LOCK_FILE))
    all_locks = [_stage_hashes(_yaml_at(ws, c, LOCK_FILE)) for c in dirty_commits] + kept_locks + [
        workspace_lock_stages]
    changed = True
    while changed:  # a stage output is dirty when any of its dependencies is
        changed = False
        for stages in all_locks:
            for deps, outs in stages:
                if deps & dirty:
                    for _, md5 in outs:
                        if md5 not in dirty and md5 not in kept_data:
                            dirty.add(md5)
                            changed = True
    clean = set(kept_data)
    for stages in kept_locks + [workspace_lock_stages]:
        for deps, outs in stages:
            clean |= (deps | {md5 for _, md5 in outs}) - dirty

    with chdir(ws.root), Repo(str(ws.root)) as repo:
        stores = _Stores(repo)
        missing: list[str] = []
        protected = _expand(stores, clean, missing)
        doomed = _expand(stores, dirty, []) - protected
        if missing:
            report.warnings.append(f"listings of kept outputs not found in cache or remote: {sorted(missing)}")
        removals: list[tuple[str, Any, str]] = []
        for listing in (False, True):  # files first: a crash never loses the listing of what is left
            for store, odb in stores.odbs():
                for md5 in sorted(doomed):
                    if md5.endswith(".dir") != listing:
                        continue
                    path = odb.oid_to_path(md5)
                    if odb.fs.exists(path):
                        removals.append((store, odb.fs, path))
                        report.items.append(Item(store, str(path), int(odb.fs.size(path) or 0)))
        hashes = dirty | doomed
        run_caches = [("dvc-run-cache", stores.cache.fs, str(stores.run_cache))]
        if stores.remote_runs:
            run_caches.append(("dvc-remote-run-cache", *stores.remote_runs))
        for store, fs, root in run_caches:
            if not fs.exists(root):
                continue
            for path in sorted(fs.find(root)):
                with fs.open(path, "r") as fh:
                    entry = yaml.safe_load(fh) or {}
                recorded = {x.get("md5") for key in ("deps", "outs") for x in entry.get(key) or []}
                if recorded & hashes:
                    removals.insert(0, (store, fs, path))
                    report.items.append(Item(store, str(path), int(fs.size(path) or 0)))

    # Workspace outputs computed from a dirty version (not git-tracked files such as metrics).
    tracked = set(git(ws.root, "ls-files").splitlines())
    for deps, outs in workspace_lock_stages:
        for out_path, md5 in outs:
            target = ws.root / out_path
            if md5 in dirty and out_path not in tracked and target.exists():
                files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
                removals.append(("workspace", None, str(target)))
                report.items.append(Item("workspace", out_path, sum(p.stat().st_size for p in files)))

    # Git history must not hold tracked data.
    committed = set(git(ws.root, "log", "--all", "--format=", "--name-only", "--diff-filter=A").split("\n"))
    for path in _tracked_paths(ws):
        report.git_history += sorted(p for p in committed if p == path or p.startswith(path + "/"))

    # Weights of every version that does not descend from the champion.
    mlflow_removals = []
    for version in sorted((v for v in versions.values() if champion not in model_registry.chain(versions, str(v.version))),
                          key=lambda v: int(v.version)):
        found = _weight_artifacts(ws, client, name, version)
        for store, uri, path, size in found:
            report.items.append(Item(store, f"v{version.version}: {uri.rstrip('/')}/{path}", size))
        mlflow_removals.append((version, found))
        report.model_versions.append(str(version.version))
    suffixes = weight_suffixes()
    for batch_file in sorted(ws.runs_dir.glob("*/batch.json")):
        batch = Batch.model_validate_json(batch_file.read_text())
        if batch.registered_version in report.model_versions:
            for path in sorted(batch_file.parent.iterdir()):
                if path.name.endswith(suffixes):
                    removals.append(("run-scratch", None, str(path)))
                    report.items.append(Item("run-scratch", str(path.relative_to(ws.root)), path.stat().st_size))
    # Audit reference models trained on a sample the current dataset no longer holds (unlearnops.audit).
    from unlearnops.audit import stale_references

    for path in stale_references(ws):
        removals.append(("audit-references", None, str(path)))
        report.items.append(Item("audit-references", str(path.relative_to(ws.root)), path.stat().st_size))
    return report, removals, mlflow_removals


def _weight_artifacts(ws: Workspace, client, name: str, version) -> list[tuple[str, str, str, int]]:
    """(store, artifact root URI, path, bytes) of the weight artifacts a version still has."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    found = []
    suffixes = weight_suffixes()
    model_uri = client.get_model_version_download_uri(name, version.version)
    model_repo = get_artifact_repository(model_uri)
    for info in model_repo.list_artifacts():
        if info.path not in MODEL_METADATA:
            size = info.file_size if not info.is_dir else sum(
                f.file_size or 0 for f in _walk(model_repo, info.path))
            found.append(("mlflow-model", model_uri, info.path, int(size or 0)))
    run_uri = client.get_run(version.run_id).info.artifact_uri
    for info in get_artifact_repository(run_uri).list_artifacts():
        if not info.is_dir and info.path.endswith(suffixes):
            found.append(("mlflow-run", run_uri, info.path, int(info.file_size or 0)))
    return found


def _walk(repo, path: str):
    for info in repo.list_artifacts(path):
        if info.is_dir:
            yield from _walk(repo, info.path)
        else:
            yield info


# -- doing it -------------------------------------------------------------------------------------------------


def purge(ws: Workspace, dry_run: bool = False, wait: float = 60.0) -> PurgeReport:
    """Remove the deleted samples' bytes (see the module docstring) under the workspace lock, or with
    ``dry_run`` only list what would be removed. Raises :class:`PurgeRefused` when it may not run yet."""
    with workspace_lock(ws.state_dir, wait=wait, purpose="purge"):
        report, removals, mlflow_removals = plan(ws, dry_run=dry_run)
        if dry_run:
            return report
        remote_touched = False
        groups = [list(g) for _, g in itertools.groupby(removals, key=lambda r: r[0])]  # order kept
        with step_progress(len(groups) + len(mlflow_removals), "purge", "stores") as done:
            for group in groups:
                for store, fs, path in group:
                    if fs is not None:
                        fs.remove(path)
                        remote_touched |= store.startswith("dvc-remote")
                    elif Path(path).is_dir():
                        shutil.rmtree(path)
                    else:
                        Path(path).unlink(missing_ok=True)
                done(f"{group[0][0]}: {len(group)} removed")
            if remote_touched:
                _clear_remote_index(ws)
            client = model_registry.client(ws)
            name = ws.settings.project.model_name
            stamp = utc_now()
            for version, found in mlflow_removals:
                _purge_version(ws, client, name, version, found, report.champion, stamp)
                done(f"model version {version.version}: {len(found)} weight artifact(s) removed, purge record signed")
        if report.items:
            atomic_write_text(ws.state_dir / "purges" / f"{stamp.replace(':', '')}.json",
                              json.dumps(report.to_dict(), indent=2))
        clean_request_store(ws, report)
        return report


def _purge_version(ws: Workspace, client, name: str, version, found, champion: str, stamp: str) -> None:
    """Delete a version's weight artifacts, tag it tainted and purged, and sign its purge record."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    for _, uri, path, _ in found:
        get_artifact_repository(uri).delete_artifacts(path)
    if version.tags.get(model_registry.TAINTED_TAG) != "true":
        client.set_model_version_tag(name, version.version, model_registry.TAINTED_TAG, "true")
        client.set_model_version_tag(name, version.version, model_registry.TAG_PREFIX + "tainted_reason",
                                     f"not descended from the champion v{champion}: carries "
                                     "data its lineage deleted")
    _sign_purge(ws, client, version, [f"{uri.rstrip('/')}/{path}" for _, uri, path, _ in found], champion, stamp)
    if version.tags.get(PURGED_TAG) != "true":  # informational: decisions read the signed record
        client.set_model_version_tag(name, version.version, PURGED_TAG, "true")
        client.set_model_version_tag(name, version.version, model_registry.TAG_PREFIX + "purged_at", stamp)


def clean_request_store(ws: Workspace, report: PurgeReport) -> None:
    """Replace raw subject ids left on closed requests by keyed hashes, record what this purge cleaned on
    each forgotten request (stores it removed from, with counts, added to earlier purges'), and compact
    the store so overwritten pages keep no raw id."""
    from unlearnops.keys import keyed_hash, subject_key

    store = RequestStore(ws.requests_db)
    key = subject_key(ws)
    closed = [r for r in store.list(("forgotten", "rejected"))]
    store.redact([r.id for r in closed], lambda s: keyed_hash(key, s))
    totals = {name: entry["count"] for name, entry in report.totals().items()}
    for r in closed:
        if r.id in report.requests and r.state == "forgotten":
            merged = dict(r.purged)
            for name, count in totals.items():
                merged[name] = merged.get(name, 0) + count
            store.mark_purged([r.id], merged)
    store.compact()


def _sign_purge(ws: Workspace, client, version, removed: list[str], champion: str, stamp: str) -> None:
    """Log the signed purge record (``purge.json``) to the version's run unless a valid one is there: what
    verification, promotion and serving rely on (the ``unlearnops.purged`` tag is informational)."""
    from unlearnops.certificate import sign
    from unlearnops.keys import signing_key
    from unlearnops.verification import PURGE_RECORD, PURGE_RECORD_KIND, purge_record

    try:
        if purge_record(ws, version) is not None:
            return
    except model_registry.IntegrityError:
        pass  # a forged or damaged record is replaced by a signed one
    record = sign({"kind": PURGE_RECORD_KIND, "model_name": version.name, "version": str(version.version),
                   "mlflow_run_id": version.run_id, "purged_at": stamp, "champion": champion,
                   "removed": removed}, signing_key(ws))
    client.log_dict(version.run_id, record, PURGE_RECORD)


def _clear_remote_index(ws: Workspace) -> None:
    """Forget DVC's cached listing of the remote, so it is not trusted for objects that are gone."""
    from dvc.repo import Repo
    from dvc_data.hashfile.db import get_index

    with chdir(ws.root), Repo(str(ws.root)) as repo:
        try:
            get_index(repo.cloud.get_remote_odb(None, "purge", hash_name="md5")).clear()
        except Exception:  # no index for this remote
            pass
