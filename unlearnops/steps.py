"""The steps of the deletion flow as plain functions (the Prefect flow in ``pipelines/deletion.py`` is a thin
wrapper). Each step reads and writes the batch record ``runs/<run_id>/batch.json`` so that a step can be run,
tested or retried on its own.

Crash safety: a step's completion is recorded in the batch (written atomically) after its effects are on
disk. A run first resumes the workspace's unfinished batch, if any, at its first unfinished step; the steps
with external effects detect work an interrupted attempt already did (a committed dataset version, a
registered model version) instead of repeating it. :func:`process_pending` runs the steps under the
workspace lock without Prefect; the flow calls the same functions.
"""

from __future__ import annotations

import copy
import io
import json
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from unlearnops import certificate, data, faults, gates, registry
from unlearnops.data import load_dataset
from unlearnops.durable import atomic_write_bytes, atomic_write_text, workspace_lock
from unlearnops.gates import GateResult
from unlearnops.locate import LocateContext, configured_locators, locate_requests, read_manifest
from unlearnops.report import SCORES_FILE, write_report
from unlearnops.requests import RequestStore, keyed_hash
from unlearnops.workspace import Workspace

FORGET_FILE = "forget.npz"
#: The steps of a batch, in order. ``locate`` opens the batch; ``unlearn`` climbs the method ladder with the
#: gates after each rung; ``finalize`` closes the batch.
STEPS = ("locate", "dataset_version", "unlearn", "export", "register", "finalize")


class NothingToDo(Exception):
    pass


class Batch(BaseModel):
    """Everything one run of the deletion flow decided and measured; persisted after every step."""

    run_id: str
    created_at: str
    request_ids: list[str]
    forget_ids: list[str]
    #: request id -> the sample ids it located (one unlearning group per request).
    forget_groups: dict[str, list[str]] = Field(default_factory=dict)
    forget_hashes: list[str]
    subject_hashes: list[str]
    #: Which locator found which sample: request, sample_id, locator, score, via, locators (see locate.Located).
    located: list[dict[str, Any]] = Field(default_factory=list)
    #: The locators asked (name -> version), each request's policy, thresholds, and notes (skipped locators).
    locate_info: dict[str, Any] = Field(default_factory=dict)
    parent_version: str
    #: ``samples``, ``subjects`` or ``class`` (see :func:`request_kind`): picks the ladder.
    kind: str = "samples"
    #: Methods to try in order; each rung starts again from the parent's weights.
    ladder: list[str]
    #: Config overrides asked for the first rung (``unlearnops run --config``).
    requested_config: dict[str, Any] = Field(default_factory=dict)
    #: The rung being (or last) run, and its validated config.
    method: str
    method_config: dict[str, Any] = Field(default_factory=dict)
    rungs: list[dict[str, Any]] = Field(default_factory=list)
    device: str | None = None
    dataset_before: dict[str, Any]
    dataset_after: dict[str, Any] | None = None
    unlearn: dict[str, Any] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    gates: list[GateResult] = Field(default_factory=list)
    status: str | None = None
    caveats: list[str] = Field(default_factory=list)
    #: exporter name -> its record (``sha256``, ``path`` in the run directory, whatever else it reports).
    exports: dict[str, dict[str, Any]] = Field(default_factory=dict)
    weights_sha256: str | None = None
    registered_version: str | None = None
    #: Failures of after-certification plugin hooks (reported, not fatal: the version is registered).
    hook_errors: list[str] = Field(default_factory=list)
    #: How many samples the method and the gates used, by role (``methods``: forget, retain, calibration;
    #: ``gates``: forget, non-members, test); the two held-out parts are disjoint.
    samples_used: dict[str, Any] = Field(default_factory=dict)
    step_seconds: dict[str, float] = Field(default_factory=dict)
    completed: list[str] = Field(default_factory=list)
    resumed: int = 0

    @property
    def onnx(self) -> dict[str, Any] | None:
        """The ONNX export's record (what promotion checks and serving loads)."""
        return self.exports.get("onnx")

    @property
    def finished(self) -> bool:
        return "finalize" in self.completed

    def remaining(self) -> list[str]:
        return [step for step in STEPS if step not in self.completed]

    def run_dir(self, ws: Workspace) -> Path:
        return ws.runs_dir / self.run_id

    def save(self, ws: Workspace) -> None:
        atomic_write_text(self.run_dir(ws) / "batch.json", self.model_dump_json(indent=2))

    @classmethod
    def load(cls, ws: Workspace, run_id: str) -> "Batch":
        return cls.model_validate_json((ws.runs_dir / run_id / "batch.json").read_text())


def open_batches(ws: Workspace) -> list[Batch]:
    """Batches that were started but not finalized (normally none, or the one a crash interrupted)."""
    batches = [Batch.model_validate_json(p.read_text()) for p in sorted(ws.runs_dir.glob("*/batch.json"))]
    return sorted((b for b in batches if not b.finished), key=lambda b: (b.created_at, b.run_id))


def _complete(ws: Workspace, batch: Batch, step: str) -> None:
    """Record that ``step`` is done (atomically), then honour a fault injected after it."""
    if step not in batch.completed:
        batch.completed.append(step)
    batch.save(ws)
    faults.point(step)


@contextmanager
def timed(batch: Batch, step: str, ws: Workspace):
    started = time.perf_counter()
    yield
    batch.step_seconds[step] = round(batch.step_seconds.get(step, 0.0) + time.perf_counter() - started, 3)
    batch.save(ws)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _method_and_config(ws: Workspace, name: str, overrides: dict | None):
    """The loaded plugins, the method called ``name`` and its validated config (workspace seed by default)."""
    from unlearnops.method_runner import parse_config
    from unlearnops.plugin_manager import load_plugins

    plugins = load_plugins()
    method = plugins.get(name)
    return plugins, method, parse_config(method, {"seed": ws.settings.unlearn.seed, **(overrides or {})})


# -- 1. locate -----------------------------------------------------------------------------------------


def locate_pending(ws: Workspace, method: str | None = None, method_config: dict | None = None) -> Batch:
    """Gather every pending request, find its samples in the current dataset with the configured locators,
    settle requests with nothing left to delete (no-op or rejected), open a batch over the rest."""
    from unlearnops.locate import unmatched_targets
    from unlearnops.plugin_manager import PluginError
    from unlearnops.project import subject_key

    started = time.perf_counter()
    store = RequestStore(ws.requests_db)
    pending = store.pending()
    if not pending:
        raise NothingToDo("no pending deletion requests")
    parent = registry.batch_parent(ws)  # None (no champion): settle what can be settled, then refuse
    table = read_manifest(ws.data_dir / data.MANIFEST_FILE)  # the dataset does not change before the cut
    try:
        located_all, locators, settings = locate_with_settings(ws, [r.request for r in pending], parent, table)
    except PluginError as exc:
        store.mark_failed([r.id for r in pending], f"{type(exc).__name__}: {exc}")
        raise
    records = located_all.records([r.id for r in pending])
    located: dict[str, list[str]] = {}
    for index, stored in enumerate(pending):
        found = set(located_all.for_request(index)["sample_id"].astype(str))
        # Ids found by an earlier, interrupted attempt stay in the batch even though the data is gone.
        earlier = set(stored.located_sample_ids) - found
        if not found | earlier:
            close_unlocatable(store, stored, unmatched_targets(stored.request, table))
            continue
        records += [{"request": stored.id, "sample_id": s, "locator": "earlier-attempt", "score": None,
                     "via": None, "locators": "earlier-attempt"} for s in sorted(earlier)]
        located[stored.id] = sorted(found | earlier)
    pending = [r for r in pending if r.id in located]
    records = [r for r in records if r["request"] in located]
    if not pending:
        raise NothingToDo("no pending deletion request has samples left in the dataset")
    if parent is None:
        raise RuntimeError("no champion model: run `unlearnops train` first")
    kind = request_kind(table, pending, located)
    ladder = [method] if method else ladder_for(ws, kind)
    try:  # a missing or broken method fails the requests before the dataset is touched
        for index, name in enumerate(ladder):
            _method_and_config(ws, name, rung_config(ws, name, method_config if index == 0 else None))
    except PluginError as exc:
        store.mark_failed([r.id for r in pending], f"{type(exc).__name__}: {exc}")
        raise
    store.mark_located(located)
    forget_ids = sorted(set().union(*located.values()))
    manifest = table.select(["sample_id", "content_sha256"]).to_pandas()
    hashes = manifest.loc[manifest["sample_id"].isin(forget_ids), "content_sha256"].astype(str)
    key = subject_key(ws)
    subjects = sorted({keyed_hash(key, s) for r in pending for s in r.request.subject_ids})
    batch = Batch(
        run_id=datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6],
        created_at=_now(),
        request_ids=[r.id for r in pending],
        forget_ids=forget_ids,
        forget_groups=located,
        located=records,
        locate_info={
            "locators": {loc.name: loc.version for loc in locators},
            "policies": {r.id: r.request.policy for r in pending},
            "min_score": {loc.name: settings.min_score.get(loc.name, loc.default_min_score)
                          for loc in locators if loc.kind == "near-duplicate"},
            "max_per_seed": settings.max_per_seed,
            "notes": located_all.notes,
        },
        forget_hashes=sorted(set(hashes)),
        subject_hashes=subjects,
        parent_version=parent,
        kind=kind,
        ladder=ladder,
        requested_config=method_config or {},
        method=ladder[0],
        dataset_before=data.current_version(ws).to_dict(),
    )
    batch.step_seconds["locate"] = round(time.perf_counter() - started, 3)
    _complete(ws, batch, "locate")
    return batch


def request_kind(table, pending, located: dict[str, list[str]]) -> str:
    """``class`` when the batch removes every sample of each class it touches (in the manifest ``table``),
    else ``subjects`` when a request names subjects, else ``samples``."""
    manifest = table.select(["sample_id", "label"]).to_pandas()
    forgotten = manifest["sample_id"].isin(set().union(*located.values()))
    if forgotten.any() and not manifest.loc[~forgotten, "label"].isin(set(manifest.loc[forgotten, "label"])).any():
        return "class"
    return "subjects" if any(r.request.subject_ids for r in pending) else "samples"


def ladder_for(ws: Workspace, kind: str) -> list[str]:
    """The workspace's ladder for a request kind (``[unlearn] ladders``, else ``ladder``)."""
    unlearn = ws.settings.unlearn
    return list(unlearn.ladders.get(kind) or unlearn.ladder)


def rung_config(ws: Workspace, method: str, requested: dict | None) -> dict[str, Any]:
    """A rung's config overrides: ``[unlearn] rung_config`` for the method, then what the run asked for."""
    return {**ws.settings.unlearn.rung_config.get(method, {}), **(requested or {})}


def close_unlocatable(store: RequestStore, stored, unmatched: dict[str, list[str]]) -> str:
    """Settle a waiting request none of whose targets is in the dataset any more: when earlier processed
    requests already deleted them all, it is an idempotent no-op (processed, ``resolved_by`` the earlier
    request, with its dataset revision and model version); otherwise its targets vanished some other way
    and it is rejected with the reason. Returns the new state."""
    from unlearnops.intake import already_deleted
    from unlearnops.locate import describe_unmatched

    earlier = already_deleted(stored.request, store, states=("processed",), exclude=stored.id)
    if earlier is not None:
        store.mark_already_deleted(stored.id, earlier)
        return "processed"
    store.mark_rejected(stored.id, "nothing to delete: no target is in the dataset any more and no earlier "
                                   f"request deleted them ({describe_unmatched(unmatched)})")
    return "rejected"


def locate_context(ws: Workspace, model_version: str | None, table=None) -> LocateContext:
    """The locators' view of the workspace's current dataset: the memory-mapped manifest (``table`` when the
    caller has read it already) and features, and the registered model ``model_version`` (None: no model)
    loaded on first use."""
    def features():
        return load_dataset(ws.data_dir).features

    def model():
        return None if model_version is None else registry.load_model(ws, model_version)

    settings = ws.settings.locate
    if table is None:
        table = read_manifest(ws.data_dir / data.MANIFEST_FILE)
    return LocateContext(table, features, model, settings.min_score, settings.max_per_seed)


def locate_with_settings(ws: Workspace, requests, model_version: str | None, table=None):
    """Run the workspace's configured locators (``[locate] locators``) over ``requests``; returns
    (:class:`~unlearnops.locate.Located`, the locators, the locate settings)."""
    settings = ws.settings.locate
    locators = configured_locators(settings.locators)
    context = locate_context(ws, model_version, table)
    return locate_requests(list(requests), context, locators), locators, settings


def open_or_resume(ws: Workspace, method: str | None = None, method_config: dict | None = None) -> Batch:
    """The unfinished batch of the workspace if there is one, else a new batch over the pending requests
    (:class:`NothingToDo` when none). A method or config asked for explicitly replaces a resumed batch's
    as long as its model is not registered yet (e.g. to retry a batch whose method failed)."""
    unfinished = open_batches(ws)
    if not unfinished:
        return locate_pending(ws, method, method_config)
    batch = unfinished[0]
    batch.resumed += 1
    ladder = [method] if method else batch.ladder
    config = batch.requested_config if method_config is None else method_config
    if "register" not in batch.completed and (ladder, config) != (batch.ladder, batch.requested_config):
        batch.ladder, batch.requested_config, batch.method = ladder, config, ladder[0]
        batch.completed = [s for s in batch.completed if s in ("locate", "dataset_version")]
    batch.save(ws)
    return batch


# -- 2. dataset version --------------------------------------------------------------------------------


def cut_dataset_version(ws: Workspace, batch: Batch) -> Batch:
    """Keep the forget samples for unlearning in the run directory, then commit a dataset version
    without them (DVC add + push to the workspace remote + git commit of ``data.dvc``).

    Re-running after an interruption is safe: a half-replaced dataset is rolled forward, samples already
    removed are not looked for again, and the commit happens only if ``data.dvc`` changed, so a batch makes
    at most one dataset revision."""
    with timed(batch, "dataset_version", ws):
        data.recover_dataset(ws.data_dir)
        dataset = load_dataset(ws.data_dir, mmap=False)
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


# -- 3. unlearn -----------------------------------------------------------------------------------------


def _forget_samples(ws: Workspace, batch: Batch):
    """The deleted samples that the parent model was trained on."""
    from unlearnops.method_runner import Samples

    path = batch.run_dir(ws) / FORGET_FILE
    if not path.is_file():
        return Samples(np.zeros((0,)), np.zeros((0,), dtype=np.int64), [])
    with np.load(path, allow_pickle=False) as arrays:
        train = arrays["split"] == "train"
        return Samples(arrays["features"][train], arrays["labels"][train], list(arrays["sample_ids"][train]))


def _split_samples(ws: Workspace, split: str, limit: int | None = None, seed: int = 0, part: str | None = None):
    """Samples of one split; for ``holdout``, ``part`` keeps only its ``calibration`` (methods) or ``gate``
    (gates, audit) half — see :func:`unlearnops.datasets.holdout_part`."""
    from unlearnops.method_runner import Samples

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


def unlearn(ws: Workspace, batch: Batch, device: str | None = None) -> Batch:
    """Run the batch's unlearning method on the parent model; saves ``unlearned.pt`` in the run directory."""
    from unlearnops.method_runner import UnlearnInputs, run_method
    from unlearnops.model import pick_device, save_weights, seed_everything

    with timed(batch, "unlearn", ws):
        plugins, method, config = _method_and_config(ws, batch.method, batch.method_config)
        batch.method_config = config.model_dump()
        source = plugins.sources[method.name]
        seed_everything(config.seed)
        torch_device = pick_device(device)
        forget = _forget_samples(ws, batch)
        settings = ws.settings
        ids = np.asarray(forget.sample_ids, dtype=str)
        groups = [np.isin(ids, group) for group in batch.forget_groups.values()]
        inputs = UnlearnInputs(
            forget=forget,
            forget_groups=[g for g in groups if g.any()] or None,
            retain=_split_samples(ws, "train", settings.unlearn.retain_sample, settings.unlearn.seed),
            holdout=_split_samples(ws, "holdout", part="calibration"),
            utility_max_drop=settings.gates.utility_max_drop,
            retain_full=_split_samples(ws, "train"),
            model_factory=ws.model_factory,
            train_params=ws.params.train.model_dump(),
            train_function=ws.train_function,
        )
        model = registry.load_model(ws, batch.parent_version)
        plugins.before_unlearn({
            "run_id": batch.run_id, "request_ids": batch.request_ids, "method": method.name,
            "method_version": method.version, "method_source": source, "config": config.model_dump(),
            "device": str(torch_device), "n_forget": len(forget), "dataset_after": batch.dataset_after,
        })
        if len(forget) == 0:
            changed, details, seconds = {}, {"skipped": "no forgotten sample was in the training split"}, 0.0
        else:
            result = run_method(method, model, inputs, config, torch_device)
            model, changed, details, seconds = result.model, result.changed_parameters, result.details, result.seconds
        batch.weights_sha256 = save_weights(model, batch.run_dir(ws) / "unlearned.pt")
        batch.device = str(torch_device)
        batch.unlearn = {
            "method": method.name,
            "method_version": method.version,
            "source": source,
            "exact": bool(getattr(method, "exact", False)),
            "changed_parameters": changed,
            "seconds": seconds,
            "n_forget_trained": len(forget),
            "details": details,
        }
        batch.samples_used["methods"] = {"forget": len(forget), "retain": len(inputs.retain),
                                         "retain_full": len(inputs.retain_full), "calibration": len(inputs.holdout)}
    return batch


def _unlearned_model(ws: Workspace, batch: Batch):
    from unlearnops.model import load_weights

    return load_weights(ws.model_factory, batch.run_dir(ws) / "unlearned.pt")


# -- 4. gates -------------------------------------------------------------------------------------------


def run_gates(ws: Workspace, batch: Batch) -> Batch:
    """Data (GX), membership inference, forget accuracy and utility gates; before/after metrics."""
    import dvc.api

    from unlearnops.gates import GateEvidence
    from unlearnops.model import evaluate
    from unlearnops.plugin_manager import PluginError, load_plugins

    with timed(batch, "gates", ws):
        settings = ws.settings.gates
        parent = registry.load_model(ws, batch.parent_version)
        unlearned = _unlearned_model(ws, batch)
        forget = _forget_samples(ws, batch)
        holdout = _split_samples(ws, "holdout", part="gate")  # disjoint from the methods' calibration part
        test = _split_samples(ws, "test")
        batch.samples_used["gates"] = {"forget": len(forget), "nonmembers": len(holdout), "test": len(test)}

        with dvc.api.open(f"data/{data.MANIFEST_FILE}", repo=str(ws.root), rev=batch.dataset_before["git_rev"],
                          mode="rb") as fh:
            manifest_before = pd.read_parquet(fh)
        manifest_after = pd.read_parquet(ws.data_dir / data.MANIFEST_FILE)

        metrics: dict[str, float] = {}
        evaluations = {}
        for tag, model in (("before", parent), ("after", unlearned)):
            ev = {name: evaluate(model, s.features, s.labels) for name, s in
                  (("forget", forget), ("holdout", holdout), ("test", test))}
            evaluations[tag] = ev
            for name, e in ev.items():
                metrics[f"{name}_accuracy_{tag}"] = e.accuracy
                metrics[f"{name}_loss_{tag}"] = float(np.mean(e.loss)) if len(e.loss) else float("nan")
            auc = gates.class_matched_auc(ev["forget"].phi, forget.labels, ev["holdout"].phi, holdout.labels) \
                if len(forget) else None
            if auc is not None and np.isfinite(auc):  # NaN: no held-out sample shares a class with the forget set
                metrics[f"mia_auc_{tag}"] = auc
        np.savez(batch.run_dir(ws) / SCORES_FILE,
                 **{f"{split}_phi_{tag}": evaluations[tag][split].phi
                    for tag in ("before", "after") for split in ("forget", "holdout")})
        evidence = GateEvidence(
            manifest_before=manifest_before, manifest_after=manifest_after, forget_ids=batch.forget_ids,
            forget_hashes=batch.forget_hashes, forget_labels=forget.labels, holdout_labels=holdout.labels,
            before=evaluations["before"], after=evaluations["after"], seed=ws.settings.unlearn.seed,
        )
        results = []
        for name, entry in load_plugins().entries["gate"].items():
            try:
                result = entry.obj.check(evidence, settings)
            except Exception as exc:
                raise PluginError(f"gate {name!r} ({entry.source}) raised: {exc!r}") from exc
            if not isinstance(result, GateResult):
                raise PluginError(f"gate {name!r} ({entry.source}) returned {type(result).__name__}, "
                                  "not a GateResult")
            results.append(result)
        for artifact, content in evidence.artifacts.items():
            (batch.run_dir(ws) / artifact).write_text(json.dumps(content, indent=2, default=str))
        batch.metrics = metrics
        batch.gates = results
        batch.status, batch.caveats = gates.overall_status(results, settings,
                                                           exact=bool((batch.unlearn or {}).get("exact")))
    return batch


def unlearn_with_escalation(ws: Workspace, batch: Batch, device: str | None = None) -> Batch:
    """Climb the batch's ladder: unlearn with each method from the parent's weights and run the gates,
    stopping at the first rung that passes. Every rung tried is recorded (and certified with the batch)."""
    batch.rungs = []
    for index, name in enumerate(batch.ladder):
        batch.method = name
        batch.method_config = rung_config(ws, name, batch.requested_config if index == 0 else None)
        started = time.perf_counter()
        unlearn(ws, batch, device=device)
        run_gates(ws, batch)
        batch.rungs.append(
            {
                "method": name,
                "config": batch.method_config,
                "status": batch.status,
                "gates": {g.name: g.status for g in batch.gates},
                "gate_summaries": {g.name: g.summary for g in batch.gates},
                "caveats": batch.caveats,
                "changed_parameters": len((batch.unlearn or {}).get("changed_parameters") or {}),
                "details": (batch.unlearn or {}).get("details"),
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        batch.save(ws)
        if batch.status == "pass":
            break
    return batch


# -- 5. export -------------------------------------------------------------------------------------------


def configured_exporters(names: list[str], registry=None) -> dict[str, Any]:
    """The registered exporters called ``names``, in that order; an unknown name or two exporters writing the
    same suffix is a PluginError."""
    from unlearnops.plugin_manager import PluginError, load_plugins

    exporters = (registry or load_plugins()).named("exporter", names)
    suffixes = [e.suffix for e in exporters.values()]
    if len(set(suffixes)) != len(suffixes):
        raise PluginError(f"exporters {names} write the same file suffix twice ({suffixes})")
    return exporters


def export(ws: Workspace, batch: Batch) -> Batch:
    """Run every configured exporter (``[export] exporters``) on the unlearned model: each writes
    ``model<suffix>`` into the run directory and returns a record whose ``sha256`` must be the file's."""
    from unlearnops.model import file_sha256
    from unlearnops.plugin_manager import PluginError

    with timed(batch, "export", ws):
        holdout = _split_samples(ws, "holdout", limit=256)
        model = _unlearned_model(ws, batch).cpu().eval()
        exports = {}
        for name, exporter in configured_exporters(ws.settings.export.exporters).items():
            path = batch.run_dir(ws) / f"model{exporter.suffix}"
            path.unlink(missing_ok=True)  # a resumed attempt must not find the last one's file
            try:
                record = dict(exporter.export(copy.deepcopy(model), holdout.features, path))
            except Exception as exc:
                raise PluginError(f"exporter {name!r} failed: {exc!r}") from exc
            if not path.is_file():
                raise PluginError(f"exporter {name!r} wrote no {path.name}")
            actual = file_sha256(path)
            if record.get("sha256") != actual:
                raise PluginError(f"exporter {name!r} reported sha256 {record.get('sha256')!r} but "
                                  f"{path.name} has {actual}")
            exports[name] = {**record, "path": path.name}
        batch.exports = exports
    return batch


# -- 6. certify and register -----------------------------------------------------------------------------


def software_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("unlearnops", "torch", "mlflow", "dvc", "prefect", "great-expectations", "onnx",
                 "onnxruntime-gpu", "pluggy", "numpy", "scikit-learn"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def located_summary(batch: Batch) -> dict[str, Any]:
    """How the batch's samples were found: locators asked, policies, thresholds, counts per locator, and one
    row per (request, sample) with the locator that found it and its score (certificate, ``locate --json``)."""
    return {**batch.locate_info, "by_locator": count_by_locator(batch.located), "samples": batch.located}


def count_by_locator(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many located samples each locator found (the locator credited in each record)."""
    return dict(Counter(record["locator"] for record in records))


HOLDOUT_RULE = ("held-out split halved by a salted sha256 of the sample id: 'calibration' given to methods, "
                "'gate' used only by gates and audits (unlearnops.datasets.holdout_part)")


def build_certificate(ws: Workspace, batch: Batch) -> dict[str, Any]:
    return {
        "issued_at": _now(),
        "run_id": batch.run_id,
        "status": "certified" if batch.status == "pass" else f"not-certified ({batch.status})",
        "requests": batch.request_ids,
        "subjects_hmac_sha256": batch.subject_hashes,
        "samples_removed": len(batch.forget_ids),
        "located": located_summary(batch),
        "samples_used": {**batch.samples_used, "holdout_rule": HOLDOUT_RULE},
        "dataset_before": batch.dataset_before,
        "dataset_after": batch.dataset_after,
        "parent_model_version": batch.parent_version,
        "request_kind": batch.kind,
        "ladder": batch.ladder,
        "rungs": batch.rungs,
        "method": {
            "name": batch.method,
            "version": (batch.unlearn or {}).get("method_version"),
            "source": (batch.unlearn or {}).get("source"),
            "config": batch.method_config,
            "changed_parameters": (batch.unlearn or {}).get("changed_parameters"),
        },
        "device": batch.device,
        "gates": [g.model_dump() for g in batch.gates],
        "caveats": batch.caveats,
        "gate_settings": ws.settings.gates.model_dump(),
        "seed": ws.settings.unlearn.seed,
        "software": software_versions(),
        "metrics": batch.metrics,
        "weights_sha256": batch.weights_sha256,
        "onnx": {k: v for k, v in (batch.onnx or {}).items() if k != "path"},
        # Other exporters' files (the ONNX one above): name -> record with the file's name and sha256.
        "exports": {name: {("file" if k == "path" else k): v for k, v in record.items()}
                    for name, record in batch.exports.items() if name != "onnx"},
    }


def _registered_version(ws: Workspace, batch: Batch) -> str | None:
    """The model version an earlier, interrupted attempt of this batch registered, if any. MLflow runs of
    the attempt that never got a version are deleted so they cannot be mistaken for results."""
    import mlflow

    mlflow_client = registry.client(ws)
    experiment = mlflow.get_experiment_by_name(registry.EXPERIMENT)
    if experiment is None:
        return None
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{registry.TAG_PREFIX}run_id` = '{batch.run_id}'"
    )
    found = None
    for run in runs:
        versions = mlflow_client.search_model_versions(f"run_id = '{run.info.run_id}'")
        if versions:
            found = str(versions[0].version)
        else:
            mlflow_client.delete_run(run.info.run_id)
    return found


def certify_and_register(ws: Workspace, batch: Batch) -> Batch:
    """Sign the certificate and register the unlearned model as a new version. Alias ``candidate`` moves
    to it only when every gate passed. A version that an interrupted attempt already registered is
    completed (tags, alias), never registered twice."""
    from unlearnops.certificate import load_or_create_signing_key, sign, write

    with timed(batch, "register", ws):
        run_dir = batch.run_dir(ws)
        certified = batch.status == "pass"
        tags = {
            "kind": "unlearned",
            "parent_version": batch.parent_version,
            "dataset_rev": batch.dataset_after["git_rev"],
            "dataset_md5": batch.dataset_after["dvc_md5"],
            "requests": ",".join(batch.request_ids)[:5000],
            "method": batch.method,
            "certificate_status": "certified" if certified else f"not-certified ({batch.status})",
            "weights_sha256": batch.weights_sha256 or "",
            "onnx_sha256": (batch.onnx or {}).get("sha256", ""),
            "run_id": batch.run_id,
        }
        version = _registered_version(ws, batch)
        mlflow_client = registry.client(ws)
        name = ws.settings.project.model_name
        if version is None:
            signed = sign(build_certificate(ws, batch), load_or_create_signing_key(ws.keys_dir))
            write(signed, run_dir / "certificate.json")
            (run_dir / "unlearn.json").write_text(json.dumps(batch.unlearn, indent=2, default=str))
            with np.load(run_dir / SCORES_FILE) as arrays:
                scores = {k: arrays[k] for k in arrays.files}
            explained = next((r["details"] for r in batch.rungs if (r.get("details") or {}).get("candidates")), {})
            write_report(run_dir / "report.html", signed, scores, explained)
            version = registry.register_model(
                ws,
                _unlearned_model(ws, batch),
                run_name=f"unlearn-{batch.run_id}",
                params={"method": batch.method, **{f"config.{k}": v for k, v in batch.method_config.items()}},
                metrics=batch.metrics,
                tags=tags,
                artifacts=[run_dir / n for n in ("certificate.json", "gx_validation.json", "unlearn.json",
                                                 "report.html", *(e["path"] for e in batch.exports.values()))],
                nested_runs=[rung_run(index, rung) for index, rung in enumerate(batch.rungs)],
            ).version
            faults.point("register.version_created")
        else:  # the version exists; its tags may not (the attempt died inside the registration)
            for key, value in tags.items():
                mlflow_client.set_model_version_tag(name, version, registry.TAG_PREFIX + key, value)
        if certified:
            mlflow_client.set_registered_model_alias(name, "candidate", version)
        batch.registered_version = version
        from unlearnops.plugin_manager import load_plugins

        batch.hook_errors = load_plugins().after_certify({
            "run_id": batch.run_id, "request_ids": batch.request_ids, "registered_version": version,
            "status": tags["certificate_status"], "certificate": json.loads((run_dir / "certificate.json").read_text()),
        })
    return batch


def rung_run(index: int, rung: dict[str, Any]) -> dict[str, Any]:
    """One rung of the ladder as a nested MLflow run: its method, config, verdict, gates and time."""
    return {
        "name": f"rung-{index + 1}-{rung['method']}",
        "params": {"method": rung["method"], **{f"config.{k}": v for k, v in (rung.get("config") or {}).items()}},
        "metrics": {"seconds": rung.get("seconds"), "changed_parameters": rung.get("changed_parameters")},
        "tags": {"rung": index + 1, "status": rung["status"],
                 **{f"gate.{name}": status for name, status in (rung.get("gates") or {}).items()}},
    }


# -- 7. finalize ------------------------------------------------------------------------------------------


def finalize(ws: Workspace, batch: Batch) -> Batch:
    """Mark the batch's requests processed and delete the copy of the forgotten samples."""
    RequestStore(ws.requests_db).mark_processed(
        batch.request_ids, batch.dataset_after["git_rev"], batch.registered_version
    )
    (batch.run_dir(ws) / FORGET_FILE).unlink(missing_ok=True)
    batch.save(ws)
    return batch


def mark_failed(ws: Workspace, batch: Batch | None, error: BaseException) -> None:
    """Record a failed attempt on the batch's requests (retryable: the batch stays open and resumes)."""
    store = RequestStore(ws.requests_db)
    ids = batch.request_ids if batch else [r.id for r in store.pending()]
    store.mark_failed(ids, f"{type(error).__name__}: {error}")


def reject_request(ws: Workspace, request_id: str, reason: str, wait: float = 30.0):
    """An operator rejects a waiting request (``unlearnops request reject``). Holds the workspace lock, so
    no run opens a batch over the request meanwhile; a request that is part of an unfinished batch (its
    samples may already be cut from the dataset) cannot be rejected, nor a processed one
    (:class:`~unlearnops.requests.TransitionRefused`); rejecting a rejected request again changes nothing."""
    from unlearnops.requests import TransitionRefused

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


def run_step(ws: Workspace, batch: Batch, step: str, device: str | None = None) -> Batch:
    """Run one step of an open batch unless it is already complete; record its completion."""
    if step in batch.completed:
        return batch
    if step == "unlearn":
        batch = unlearn_with_escalation(ws, batch, device=device)
    else:
        batch = STEP_FUNCTIONS[step](ws, batch)
    _complete(ws, batch, step)
    return batch


def process_pending(
    ws: Workspace,
    method: str | None = None,
    method_config: dict | None = None,
    device: str | None = None,
    wait: float = 0.0,
) -> Batch | None:
    """Resume the unfinished batch or open a new one over the pending requests, and run its remaining
    steps, all under the workspace lock (:class:`~unlearnops.durable.WorkspaceBusy` when another run holds
    it longer than ``wait`` seconds). Returns the finished batch, or None when nothing is pending."""
    with workspace_lock(ws.state_dir, wait=wait):
        try:
            batch = open_or_resume(ws, method, method_config)
        except NothingToDo:
            return None
        try:
            for step in batch.remaining():
                batch = run_step(ws, batch, step, device=device)
        except BaseException as exc:
            mark_failed(ws, batch, exc)
            raise
        return batch


def summary(batch: Batch) -> dict[str, Any]:
    """The flat summary the demo prints (and ``--json`` emits)."""
    m = batch.metrics
    return {
        "run_id": batch.run_id,
        "requests": batch.request_ids,
        "samples_removed": len(batch.forget_ids),
        "request_kind": batch.kind,
        "located_by": located_summary(batch)["by_locator"],
        "forget_samples_trained": (batch.unlearn or {}).get("n_forget_trained"),
        "method": batch.method,
        "rungs": [f"{r['method']}: {r['status']}" for r in batch.rungs],
        "device": batch.device,
        "changed_parameters": (batch.unlearn or {}).get("changed_parameters"),
        "forget_loss_before": m.get("forget_loss_before"),
        "forget_loss_after": m.get("forget_loss_after"),
        "forget_accuracy_before": m.get("forget_accuracy_before"),
        "forget_accuracy_after": m.get("forget_accuracy_after"),
        "holdout_accuracy_before": m.get("holdout_accuracy_before"),
        "holdout_accuracy_after": m.get("holdout_accuracy_after"),
        "test_accuracy_before": m.get("test_accuracy_before"),
        "test_accuracy_after": m.get("test_accuracy_after"),
        "mia_auc_before": m.get("mia_auc_before"),
        "mia_auc_after": m.get("mia_auc_after"),
        "gates": {g.name: g.status for g in batch.gates},
        "caveats": batch.caveats,
        "certificate_status": "certified" if batch.status == "pass" else f"not-certified ({batch.status})",
        "onnx_max_abs_diff": (batch.onnx or {}).get("max_abs_diff"),
        "onnx_providers": (batch.onnx or {}).get("providers"),
        "registered_version": batch.registered_version,
        "parent_version": batch.parent_version,
        "dataset_rev_before": batch.dataset_before["git_rev"],
        "dataset_rev_after": (batch.dataset_after or {}).get("git_rev"),
        "step_seconds": batch.step_seconds,
        "hook_errors": batch.hook_errors,
        "resumed": batch.resumed,
    }


STEP_FUNCTIONS = {
    "dataset_version": cut_dataset_version,
    "export": export,
    "register": certify_and_register,
    "finalize": finalize,
}
