"""Deletion obligations across batches: which requests a model version still owes, closing requests when a
version that forgot them becomes champion, the forget copies open obligations still need, deadlines, and
the signed receipt of a forgotten request.

The invariant (see :mod:`unlearnops.requests`): a request is ``forgotten`` only when the champion is, or
descends from, the certified version that forgot its samples. Promotion refuses a version whose lineage has
not forgotten every request already cut from the dataset (:func:`obligation_problems`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from unlearnops import model_registry
from unlearnops.flow.batch import FORGET_FILE, Batch
from unlearnops.requests import CARRIED_STATES, HASHED_PREFIX, OPEN_STATES, RequestStore, StoredRequest
from unlearnops.workspace import Workspace

RECEIPT_SCHEMA = "unlearnops.deletion-receipt/v1"


class ReceiptRefused(ValueError):
    """The request is not forgotten yet (or unknown): there is nothing to attest."""


def cut_obligations(ws: Workspace) -> list[StoredRequest]:
    """Open requests whose samples are already cut from the dataset (a version must forget them)."""
    return [r for r in RequestStore(ws.requests_db).list(OPEN_STATES) if r.dataset_rev]


def obligation_problems(ws: Workspace, version: str, versions: dict | None = None) -> list[str]:
    """Why ``version`` may not be champion for the requests it owes ([] when none). Every request cut from
    the dataset must be forgotten by a certified version in ``version``'s lineage, or by a certified
    descendant of ``version`` (promotable next: the request stays ``certified`` until it is champion). A
    request cut but forgotten by no certified version (``cut``, ``uncertified``) blocks every promotion
    until a batch that carries it certifies."""
    versions = versions if versions is not None else model_registry.versions_by_number(ws)
    line = model_registry.chain(versions, version)

    def covered(r: StoredRequest) -> bool:
        return bool(r.certified_version) and (
            r.certified_version in line or version in model_registry.chain(versions, r.certified_version))

    owed = [r for r in cut_obligations(ws) if not covered(r)]
    if not owed:
        return []
    listed = ", ".join(f"{r.id} ({r.state}" + (f", v{r.model_version}" if r.model_version else "") + ")"
                       for r in owed[:10]) + (f" and {len(owed) - 10} more" if len(owed) > 10 else "")
    return [f"its training data still holds samples of open requests {listed}: no certified version in its "
            "lineage forgot them (run `unlearnops run` with a method that certifies, e.g. --method retrain)"]


def close_on_promotion(ws: Workspace, champion: str) -> list[str]:
    """Mark ``forgotten`` every certified request whose version is ``champion`` or one of its ancestors;
    returns their ids."""
    store = RequestStore(ws.requests_db)
    line = model_registry.chain(model_registry.versions_by_number(ws), champion)
    ids = [r.id for r in store.list(("certified",)) if r.certified_version in line]
    store.mark_forgotten(ids, champion)
    return ids


def settle_legacy(ws: Workspace) -> list[str]:
    """Map rows of the old ``processed`` state once: ``forgotten`` when the champion is (or descends from)
    their version, ``certified`` when their version's certificate verifies as certified, else
    ``uncertified`` (the obligation is open again). Returns the ids mapped."""
    from unlearnops.verification import verify_version

    store = RequestStore(ws.requests_db)
    legacy = store.legacy()
    if not legacy:
        return []
    champion = model_registry.resolve_version(ws, "champion")
    versions = model_registry.versions_by_number(ws)
    line = model_registry.chain(versions, champion) if champion else []
    for request_id, version in legacy:
        if version and version in line:
            store.settle_legacy(request_id, "forgotten", version, champion)
            continue
        result = verify_version(ws, version) if version in versions else None
        if result is not None and result.status == "certified" and not result.problems:
            store.settle_legacy(request_id, "certified", version)
        else:
            store.settle_legacy(request_id, "uncertified", reasons=[
                f"stored as 'processed' before obligation states; v{version} is not a verified certified version"])
    return [request_id for request_id, _ in legacy]


def needed_runs(ws: Workspace) -> set[str]:
    """Run directories whose forget copy an open obligation still needs (cut, not certified)."""
    return {r.run_id for r in RequestStore(ws.requests_db).list((*CARRIED_STATES, "failed"))
            if r.run_id and r.dataset_rev}


def delete_unneeded_forget_copies(ws: Workspace, finished: Batch | None = None) -> list[str]:
    """Delete the forget copy of every finished batch (``finished`` counts as one) that no open
    obligation needs any more; returns the run ids cleaned."""
    needed = needed_runs(ws)
    cleaned = []
    for path in sorted(ws.runs_dir.glob(f"*/{FORGET_FILE}")):
        run_id = path.parent.name
        batch_file = path.parent / "batch.json"
        done = (finished is not None and run_id == finished.run_id) or (
            batch_file.is_file() and Batch.model_validate_json(batch_file.read_text()).finished)
        if done and run_id not in needed:
            path.unlink(missing_ok=True)
            cleaned.append(run_id)
    return cleaned


def missing_forget_copies(ws: Workspace) -> list[StoredRequest]:
    """Open, cut, uncertified requests whose samples' copy (``runs/<run>/forget.npz``) is gone: only an
    exact method (retraining) can still forget them."""
    import numpy as np

    missing = []
    for r in RequestStore(ws.requests_db).list((*CARRIED_STATES, "failed")):
        if not r.dataset_rev or not r.located_sample_ids:
            continue
        path = ws.runs_dir / (r.run_id or "-") / FORGET_FILE
        held: set[str] = set()
        if r.run_id and path.is_file():
            with np.load(path, allow_pickle=False) as arrays:
                held = set(arrays["sample_ids"].astype(str))
        if not set(r.located_sample_ids) <= held:
            missing.append(r)
    return missing


def overdue(ws: Workspace, now: datetime | None = None) -> list[StoredRequest]:
    """Open requests past their due date."""
    now = now or datetime.now(timezone.utc)
    return [r for r in RequestStore(ws.requests_db).list(OPEN_STATES) if r.overdue(now)]


def receipt(ws: Workspace, request_id: str) -> dict[str, Any]:
    """The signed receipt of a forgotten request: which dataset revision no longer holds its samples, which
    model version forgot them (certificate sha256) and is champion, what purge cleaned; subjects only as
    keyed hashes. :class:`ReceiptRefused` while the request is open."""
    from unlearnops.certificate import sign
    from unlearnops.keys import keyed_hash, signing_key, subject_key

    store = RequestStore(ws.requests_db)
    try:
        stored = store.get(request_id)
    except KeyError:
        raise ReceiptRefused(f"no request {request_id!r}") from None
    if stored.state != "forgotten":
        raise ReceiptRefused(f"request {request_id} is {stored.state}: a receipt is issued once it is forgotten "
                             "(a certified version that forgot its samples is the champion)")
    key = subject_key(ws)
    subjects = sorted({s.removeprefix(HASHED_PREFIX) if s.startswith(HASHED_PREFIX) else keyed_hash(key, s)
                       for s in stored.request.subject_ids})
    samples = sorted(stored.located_sample_ids)
    purged = stored.purged or {}
    statement = [
        f"Deletion request {stored.id}, received {stored.created_at}, due {stored.due_at}, "
        f"was completed on {stored.forgotten_at}.",
        f"{len(samples)} samples it named were removed from the training data: dataset revision "
        f"{stored.dataset_rev} no longer holds them.",
        f"Model version {stored.certified_version} forgot them (certificate sha256 {stored.certificate_sha256}); "
        f"version {stored.champion_version}, which is or descends from it, was made the production model.",
        ("Purge removed the remaining copies: " + ", ".join(f"{store_name} ({n} items)" for store_name, n in
                                                            sorted(purged.items())) + ".") if purged else
        "No purge has run since: older dataset versions and model weights may still hold copies.",
    ]
    payload = {
        "kind": RECEIPT_SCHEMA,
        "request": stored.id,
        "received_at": stored.created_at,
        "due_at": stored.due_at,
        "forgotten_at": stored.forgotten_at,
        "reason": stored.request.reason,
        "subjects_hmac_sha256": subjects,
        "samples_removed": len(samples),
        "samples_sha256": hashlib.sha256("\n".join(samples).encode()).hexdigest(),
        "dataset_rev_without_samples": stored.dataset_rev,
        "certified_version": stored.certified_version,
        "certificate_sha256": stored.certificate_sha256,
        "champion_version": stored.champion_version,
        "purged": purged,
        "statement": statement,
    }
    return sign(payload, signing_key(ws))
