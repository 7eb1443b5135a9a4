"""Step ``locate``: gather every pending request, find its samples in the current dataset with the
configured locators, settle requests with nothing left to delete (no-op or rejected), and open a batch over
the rest with the ladder for its request kind. The batch also carries every request that an earlier batch
cut but no certified version forgot (``cut``, ``uncertified``): forget sets accumulate, so the batch after an
uncertified one forgets both. Carried requests alone open a batch only when a method is asked for
(``unlearnops run --method retrain``), so scheduled runs do not retry the same failing ladder forever."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from unlearnops import data, model_registry
from unlearnops.clock import utc_now
from unlearnops.flow.batch import Batch, LocateRecord, NothingToDo, open_batches
from unlearnops.flow.unlearn import validated_ladder
from unlearnops.keys import keyed_hash, subject_key
from unlearnops.locate import LocateContext, configured_locators, locate_requests, read_manifest
from unlearnops.plugin_manager import PluginError
from unlearnops.requests import CARRIED_STATES, HASHED_PREFIX, RequestStore
from unlearnops.workspace import Workspace


def batch_waiting(ws: Workspace, method: str | None = None) -> bool:
    """Whether a run has a batch to work on: an unfinished one, pending requests, or requests cut but not
    certified when a method is asked for (what :func:`locate` opens a batch over)."""
    if open_batches(ws):
        return True
    store = RequestStore(ws.requests_db)
    return bool(store.pending()) or bool(method and _carried(store))


def _carried(store: RequestStore) -> list:
    return [r for r in store.list(CARRIED_STATES) if r.located_sample_ids]


def locate(ws: Workspace, method: str | None = None, method_config: dict | None = None) -> Batch:
    """Open a batch over the pending requests that still have samples in the dataset
    (:class:`~unlearnops.flow.batch.NothingToDo` when none). ``method`` replaces the kind's ladder with one
    rung; every rung's method and config are checked before the dataset is touched."""
    from unlearnops.locate import unmatched_targets

    started = time.perf_counter()
    store = RequestStore(ws.requests_db)
    pending = store.pending()
    carried = _carried(store)
    if not pending and not (carried and method):
        raise NothingToDo("no pending deletion requests" + (
            f" ({len(carried)} cut but not certified: retry them with `unlearnops run --method METHOD`)"
            if carried else ""))
    parent = model_registry.batch_parent(ws)  # None (no champion): settle what can be settled, then refuse
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
            close_unlocatable(store, stored, unmatched_targets(stored.request, table), subject_key(ws))
            continue
        records += [{"request": stored.id, "sample_id": s, "locator": "earlier-attempt", "score": None,
                     "via": None, "locators": "earlier-attempt"} for s in sorted(earlier)]
        located[stored.id] = sorted(found | earlier)
    pending = [r for r in pending if r.id in located]
    records = [r for r in records if r["request"] in located]
    if not pending and not (carried and method):
        raise NothingToDo("no pending deletion request has samples left in the dataset")
    if parent is None:
        raise RuntimeError("no champion model: run `unlearnops train` first")
    kind = request_kind(table, pending + carried, located)
    ladder = check_ladder(ws, kind, method, method_config, fail=[r.id for r in pending])
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    key = subject_key(ws)
    store.mark_located(located, run_id, hash_subject=lambda s: keyed_hash(key, s))
    new_ids = set().union(*located.values())
    carried_ids = sorted(set().union(*(r.located_sample_ids for r in carried)) - new_ids)
    manifest = table.select(["sample_id", "content_sha256"]).to_pandas()
    hashes = manifest.loc[manifest["sample_id"].isin(new_ids), "content_sha256"].astype(str)
    subjects = sorted({keyed_hash(key, s) for r in pending for s in r.request.subject_ids}
                      | {s.removeprefix(HASHED_PREFIX) for r in carried for s in r.request.subject_ids})
    records += [{"request": r.id, "sample_id": s, "locator": "carried", "score": None, "via": r.run_id,
                 "locators": "carried"} for r in carried for s in r.located_sample_ids]
    batch = Batch(
        run_id=run_id,
        created_at=utc_now(),
        request_ids=[r.id for r in pending + carried],
        forget_ids=sorted(new_ids | set(carried_ids)),
        forget_groups={**located, **{r.id: r.located_sample_ids for r in carried}},
        carried_ids=carried_ids,
        carried_runs=sorted({r.run_id for r in carried if r.run_id}),
        located=records,
        locate_info=LocateRecord(
            locators={loc.name: loc.version for loc in locators},
            policies={r.id: r.request.policy for r in pending + carried},
            min_score=min_scores(settings, locators),
            max_per_seed=settings.max_per_seed,
            notes=located_all.notes,
        ),
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
    batch.complete(ws, "locate")
    return batch


def check_ladder(ws: Workspace, kind: str, method: str | None, method_config: dict | None,
                 fail: list[str] | None = None) -> list[str]:
    """:func:`~unlearnops.flow.unlearn.validated_ladder`, marking the requests ``fail`` failed when a rung's
    method is missing or its config is invalid (before anything is touched)."""
    try:
        return validated_ladder(ws, kind, method, method_config)
    except PluginError as exc:
        if fail:
            RequestStore(ws.requests_db).mark_failed(fail, f"{type(exc).__name__}: {exc}")
        raise


def request_kind(table, pending, located: dict[str, list[str]]) -> str:
    """``class`` when the batch removes every sample of each class it touches (in the manifest ``table``),
    else ``subjects`` when a request names subjects, else ``samples``."""
    manifest = table.select(["sample_id", "label"]).to_pandas()
    forgotten = manifest["sample_id"].isin(set().union(set(), *located.values()))
    if forgotten.any() and not manifest.loc[~forgotten, "label"].isin(set(manifest.loc[forgotten, "label"])).any():
        return "class"
    return "subjects" if any(r.request.subject_ids for r in pending) else "samples"


def close_unlocatable(store: RequestStore, stored, unmatched: dict[str, list[str]], key: bytes | None = None) -> str:
    """Settle a waiting request none of whose targets is in the dataset any more: when earlier requests
    already cut them all, it follows the earliest of them (its state, dataset revision and versions,
    ``resolved_by`` naming it: an idempotent no-op); otherwise its targets vanished some other way and it is
    rejected with the reason. Its raw subject ids are replaced by keyed hashes either way. Returns the new
    state."""
    from unlearnops.intake import already_deleted
    from unlearnops.locate import describe_unmatched

    hash_subject = None if key is None else (lambda s: keyed_hash(key, s))
    earlier = already_deleted(stored.request, store, states=("cut", "uncertified", "certified", "forgotten"),
                              exclude=stored.id, key=key)
    if earlier is not None:
        store.mark_already_deleted(stored.id, earlier, hash_subject=hash_subject)
        return store.get(stored.id).state
    store.mark_rejected(stored.id, "nothing to delete: no target is in the dataset any more and no earlier "
                                   f"request deleted them ({describe_unmatched(unmatched)})")
    if hash_subject is not None:
        store.redact([stored.id], hash_subject)
    return "rejected"


def locate_context(ws: Workspace, model_version: str | None, table=None) -> LocateContext:
    """The locators' view of the workspace's current dataset: the memory-mapped manifest (``table`` when the
    caller has read it already) and features, and the registered model ``model_version`` (None: no model)
    loaded on first use."""
    def features():
        return data.load_dataset(ws.data_dir).features

    def model():
        return None if model_version is None else model_registry.load_model(ws, model_version)

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


def min_scores(settings, locators) -> dict[str, float]:
    """The minimum score each near-duplicate locator used (its configured one, else its default)."""
    return {loc.name: settings.min_score.get(loc.name, loc.default_min_score)
            for loc in locators if loc.kind == "near-duplicate"}


def count_by_locator(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many located samples each locator found (the locator credited in each record)."""
    return dict(Counter(record["locator"] for record in records))


def located_summary(batch: Batch) -> dict[str, Any]:
    """How the batch's samples were found: locators asked, policies, thresholds, counts per locator, and one
    row per (request, sample) with the locator that found it and its score (certificate, ``locate --json``)."""
    return {**batch.locate_info.model_dump(), "by_locator": count_by_locator(batch.located),
            "samples": batch.located}
