"""Audit mode: the periodic, stronger membership test of a registered unlearned version.

Two offline attacks with K reference models (1-8) trained *without* the audited samples:

* **LiRA, offline** (Carlini et al. 2022, "Membership Inference Attacks From First Principles", offline
  variant): the logit-scaled confidence phi = log(p/(1-p)) of the true label under the audited model is
  compared with its distribution under the reference ("OUT") models, a Gaussian with per-example mean and,
  as the paper advises for few reference models, one global variance; the score is the one-sided test
  statistic z = (phi - mu_out(x)) / sigma_out (higher: more member-like). With K = 1 there is no spread
  across references, so sigma_out is the spread of phi - mu_out over the known non-members. No query
  augmentation: nothing here assumes images.
* **RMIA, offline** (Zarifzadeh et al. 2024, "Low-Cost High-Power Membership Inference Attacks"): the
  likelihood ratio of x, p(y|x, target) / p(y|x), against the same ratio for population samples z; with only
  OUT models p(y|x) is approximated as ((1+a)/2) mean_out p(y|x, ref) + (1-a)/2 (``a`` configurable, default
  0.3). The score of x is the share of population samples z whose ratio x exceeds by more than gamma (1).

Members are the forget set of the audited version (the training samples its batch deleted, read from the
dataset version before the batch through DVC, so an audit must run before ``unlearnops purge`` removes them);
non-members are the ``gate`` half of the current held-out split (never given to unlearning methods, see
:func:`unlearnops.datasets.holdout_part`); the RMIA population is the current test split. Reference models
are trained with the workspace's model factory and training function (``params.yaml`` train section) on
random halves of the current dataset's training split — data that the forget set, the non-members and the
population are all outside of.

Verdict: each attack is run on the parent model and on the audited version, and its class-matched AUC
(bootstrap CI) is judged exactly like the per-batch gate (:func:`unlearnops.gates.membership_verdict`): fail
when the CI is wholly above 0.5 + ``mia_margin`` (still member-like) or wholly below 0.5 - ``mia_margin``
(over-forgetting); pass when it lies inside the band *and* the same attack saw the parent's membership (its CI
wholly above the band); otherwise inconclusive (no power, or an interval too wide). The audit fails when any
attack fails, passes when at least one attack passes and every other one is only powerless, and is
inconclusive otherwise. TPR at 0.1 % and 1 % FPR are reported with CIs; with n non-members the smallest
meaningful FPR is 1/n (``fpr_resolution``): below it, the TPR is measured at zero false positives.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unlearnops import gates, model_registry
from unlearnops.clock import utc_now
from unlearnops.data import Dataset, load_dataset
from unlearnops.durable import atomic_write_text
from unlearnops.method_runner import Samples, call_training
from unlearnops.workspace import Workspace

SCHEMA = "unlearnops.audit/v1"
MAX_REFERENCES = 8
#: Share of the training pool each reference model is trained on (the attacks' "random halves").
REFERENCE_FRACTION = 0.5
RMIA_A = 0.3
RMIA_GAMMA = 1.0
FPRS = (0.001, 0.01)


class AuditRefused(ValueError):
    """The version cannot be audited (unknown, a base model, its deleted samples purged, bad K)."""


# -- reference models ------------------------------------------------------------------------------------


def references_dir(ws: Workspace) -> Path:
    return ws.state_dir / "audit" / "refs"


def _recipe(ws: Workspace) -> dict[str, Any]:
    """What a reference model's training depends on besides its data: reused only when it is unchanged."""
    params = ws.params.train.model_dump()
    params.pop("seed", None)
    return {"model_factory": ws.settings.project.model_factory,
            "train_function": ws.settings.project.train_function,
            "train_params": params, "fraction": REFERENCE_FRACTION}


@dataclass
class Reference:
    path: Path
    meta: dict[str, Any]
    reused: bool

    def describe(self, ws: Workspace) -> dict[str, Any]:
        return {"path": str(self.path.relative_to(ws.root)), "reused": self.reused,
                **{k: v for k, v in self.meta.items() if k != "train_ids"}}


def _cached(ws: Workspace) -> list[Reference]:
    found = []
    for meta_path in sorted(references_dir(ws).glob("*/*.json")):
        weights = meta_path.with_suffix(".pt")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if weights.is_file():
            found.append(Reference(weights, meta, reused=True))
    return found


def stale_references(ws: Workspace, train_ids: set[str] | None = None) -> list[Path]:
    """Cached reference models (weights and id files) trained on a sample that is not in ``train_ids``
    (default: the current dataset's training split), i.e. deleted since: they still carry its influence."""
    cached = _cached(ws)
    if cached and train_ids is None:
        manifest = load_dataset(ws.data_dir).manifest
        train_ids = set(manifest.loc[manifest["split"] == "train", "sample_id"].astype(str))
    return [path for ref in cached if not set(ref.meta["train_ids"]) <= train_ids
            for path in (ref.path, ref.path.with_suffix(".json"))]


def prune_references(ws: Workspace, train_ids: set[str]) -> list[str]:
    """Delete every cached reference model trained on a sample not in ``train_ids``; returns the weights'
    paths. ``unlearnops purge`` removes the same files (:func:`stale_references`)."""
    removed = []
    for path in stale_references(ws, train_ids):
        path.unlink(missing_ok=True)
        if path.suffix == ".pt":
            removed.append(str(path.relative_to(ws.root)))
    return removed


def reference_models(ws: Workspace, pool: Dataset, dataset_md5: str, k: int, device, train_missing: bool = True,
                     progress=None) -> tuple[list[Reference], list[str]]:
    """K reference models for the training pool ``pool`` (the current training split), reused from the cache
    where sound, trained and cached otherwise (``refs/<dataset md5>/<i>.pt`` with ``<i>.json`` holding the
    training-set ids, seed and recipe).

    Reuse rule: a cached reference model may serve an audit only if every sample it was trained on is still
    in the current training data (its training ids are a subset of ``pool``) and it was trained with the
    same recipe (model factory, training function, ``params.yaml`` train section). Dataset versions only
    ever lose samples, so such a model never saw any sample deleted up to now — in particular not the forget
    set of any version being audited, nor the held-out/test samples (references train on the training split
    only) — and it is what a reference model drawn from today's data could have been. A model that fails the
    rule because samples were deleted since is removed from the cache (:func:`prune_references`), not kept.
    With ``train_missing`` false only valid cached models are returned (possibly fewer than K);
    ``progress(message)`` hears of each model trained. Returns the references and the paths pruned."""
    from unlearnops.model import save_weights, seed_everything

    ids = pool.manifest["sample_id"].astype(str).to_numpy()
    id_set = set(ids)
    pruned = prune_references(ws, id_set)
    recipe = _recipe(ws)
    chosen = [r for r in _cached(ws) if r.meta.get("recipe") == recipe][:k]
    target_dir = references_dir(ws) / dataset_md5
    target_dir.mkdir(parents=True, exist_ok=True)
    index = 0
    while train_missing and len(chosen) < k:
        while (target_dir / f"{index}.json").exists():
            index += 1
        seed = int(hashlib.sha256(f"{dataset_md5}:{index}".encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng(seed)
        mask = np.zeros(len(ids), dtype=bool)
        mask[rng.choice(len(ids), size=max(1, int(len(ids) * REFERENCE_FRACTION)), replace=False)] = True
        started = time.perf_counter()
        params = {**ws.params.train.model_dump(), "seed": seed % 2**31}
        seed_everything(params["seed"])  # before the factory draws the initial weights
        model = call_training(ws.train_function, ws.model_factory(),
                              Samples(np.asarray(pool.features[mask]), pool.labels[mask], ids[mask].tolist()),
                              device=device, **params)
        path = target_dir / f"{index}.pt"
        meta = {"dataset_md5": dataset_md5, "index": index, "seed": params["seed"], "n_train": int(mask.sum()),
                "recipe": recipe, "seconds": round(time.perf_counter() - started, 2),
                "created_at": utc_now(), "train_ids": sorted(ids[mask].tolist())}
        meta["sha256"] = save_weights(model, path)
        atomic_write_text(target_dir / f"{index}.json", json.dumps(meta))  # written last: marks it complete
        chosen.append(Reference(path, meta, reused=False))
        if progress:
            progress(f"reference model {len(chosen)}/{k} trained on {meta['n_train']} samples in {meta['seconds']} s")
    return chosen, pruned


def gate_references(ws: Workspace, forget_ids: list[str], forget_features: np.ndarray, forget_labels: np.ndarray,
                    k: int, train_missing: bool = True, device=None, progress=None):
    """Evaluations of the forget set by up to ``k`` reference models that never trained on it (the pool
    :func:`reference_models` keeps for audits too: random halves of the current training split, which the
    forget set has left), and a note saying where they came from and what they cost. Returns ``(None,
    note)`` when there is none (``note["why"]``)."""
    from unlearnops.model import evaluate, load_weights, pick_device

    started = time.perf_counter()
    current = load_dataset(ws.data_dir, mmap=False)
    if set(map(str, forget_ids)) & set(current.manifest["sample_id"].astype(str)):
        return None, {"why": "the forgotten samples are still in the current dataset"}
    if k < 1:
        return None, {"why": "the workspace asks for none (gates.references = 0)"}
    torch_device = pick_device(device)
    refs, pruned = reference_models(ws, current.split("train"), data_md5(ws), k, torch_device,
                                    train_missing=train_missing, progress=progress)
    note = {"k": len(refs), "reused": sum(r.reused for r in refs), "trained": sum(not r.reused for r in refs),
            "pruned_stale": len(pruned), "training_seconds": round(sum(r.meta.get("seconds", 0) for r in refs
                                                                        if not r.reused), 2),
            "source": f"random halves ({REFERENCE_FRACTION:.0%}) of the current training split, cached in "
                      f"{references_dir(ws).relative_to(ws.root)}"}
    if not refs:
        return None, {**note, "why": "none cached and gates.train_references is off"}
    evaluations = [evaluate(load_weights(ws.model_factory, r.path, torch_device), forget_features, forget_labels)
                   for r in refs]
    note["seconds"] = round(time.perf_counter() - started, 2)
    return evaluations, note


def data_md5(ws: Workspace) -> str:
    """The DVC md5 of the current dataset version (what reference models are filed under)."""
    from unlearnops import data

    return data.current_version(ws).dvc_md5


# -- attacks -------------------------------------------------------------------------------------------


def lira_offline(target_phi: np.ndarray, reference_phi: np.ndarray, nonmember: np.ndarray) -> np.ndarray:
    """Offline LiRA statistic z = (phi - mu_out(x)) / sigma_out per example. ``reference_phi`` is K x n;
    ``nonmember`` marks the known non-members (the spread used when K = 1)."""
    mu = reference_phi.mean(axis=0)
    if reference_phi.shape[0] >= 2:
        sigma = float(np.sqrt(np.mean(reference_phi.var(axis=0, ddof=1))))
    else:
        sigma = float(np.std(target_phi[nonmember] - mu[nonmember]))
    return (target_phi - mu) / max(sigma, 1e-6)


def _probability(phi: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(phi, -700, 700)))


def rmia_offline(target_phi: np.ndarray, reference_phi: np.ndarray, population_target_phi: np.ndarray,
                 population_reference_phi: np.ndarray, a: float = RMIA_A, gamma: float = RMIA_GAMMA) -> np.ndarray:
    """Offline RMIA score per example: the share of population samples z with
    [p(x|target)/p(x)] / [p(z|target)/p(z)] > gamma, where p(.) = ((1+a)/2) mean_out p(.|ref) + (1-a)/2."""

    def ratio(t_phi, r_phi):
        marginal = (1 + a) / 2 * _probability(r_phi).mean(axis=0) + (1 - a) / 2
        return _probability(t_phi) / marginal

    x_ratio = ratio(target_phi, reference_phi)
    z_ratio = np.sort(ratio(population_target_phi, population_reference_phi))
    # count of z with x_ratio / z_ratio > gamma, i.e. z_ratio < x_ratio / gamma
    return np.searchsorted(z_ratio, x_ratio / gamma, side="left") / max(len(z_ratio), 1)


def _metrics(member, member_labels, nonmember, nonmember_labels, settings, rng) -> dict[str, Any]:
    """Class-matched AUC and TPR at 0.1 % / 1 % FPR, each with a stratified bootstrap CI."""
    auc = gates.class_matched_auc(member, member_labels, nonmember, nonmember_labels)
    boot = {"auc": [], **{f"tpr_at_{f}": [] for f in FPRS}}
    for _ in range(settings.bootstrap):
        mi = gates._stratified_resample(member_labels, rng)
        ni = gates._stratified_resample(nonmember_labels, rng)
        boot["auc"].append(gates.class_matched_auc(member[mi], member_labels[mi], nonmember[ni], nonmember_labels[ni]))
        for f in FPRS:
            boot[f"tpr_at_{f}"].append(gates.tpr_at_fpr(member[mi], nonmember[ni], f))
    alpha = 1 - settings.confidence

    def ci(values):
        return [float(v) for v in np.nanquantile(values, [alpha / 2, 1 - alpha / 2])]

    result = {"auc": float(auc), "auc_ci": ci(boot["auc"])}
    for f in FPRS:
        key = f"tpr_at_{f * 100:g}pct_fpr"
        result[key] = gates.tpr_at_fpr(member, nonmember, f)
        result[key + "_ci"] = ci(boot[f"tpr_at_{f}"])
    return result


def combine(verdicts: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The audit verdict from the attacks' verdicts (see the module docstring)."""
    statuses = {name: v["status"] for name, v in verdicts.items()}
    failed = [n for n, s in statuses.items() if s == "fail"]
    if failed:
        return "fail", "; ".join(f"{n}: {verdicts[n]['summary']}" for n in failed)
    passed = [n for n, s in statuses.items() if s == "pass"]
    others_powerless = all(v["status"] == "pass" or not v["power"] for v in verdicts.values())
    if passed and others_powerless:
        return "pass", (f"{', '.join(passed)} saw the parent's membership and find the forget set "
                        "indistinguishable from non-members")
    return "inconclusive", "; ".join(f"{n}: {v['summary']}" for n, v in verdicts.items())


# -- the audit -----------------------------------------------------------------------------------------


def _dataset_at(ws: Workspace, rev: str, with_features: bool):
    """Manifest (and features) of the dataset committed at git revision ``rev``, read through DVC."""
    import dvc.api
    import pandas as pd

    from unlearnops.data import FEATURES_FILE, MANIFEST_FILE

    with dvc.api.open(f"data/{MANIFEST_FILE}", repo=str(ws.root), rev=rev, mode="rb") as fh:
        manifest = pd.read_parquet(fh)
    if not with_features:
        return manifest, None
    with dvc.api.open(f"data/{FEATURES_FILE}", repo=str(ws.root), rev=rev, mode="rb") as fh:
        features = np.load(io.BytesIO(fh.read()), allow_pickle=False)
    return manifest, features


def _version_context(ws: Workspace, version: str) -> tuple[Any, dict[str, Any]]:
    from mlflow.exceptions import MlflowException

    client = model_registry.client(ws)
    name = ws.settings.project.model_name
    try:
        model_version = client.get_model_version(name, version)
    except MlflowException as exc:
        raise AuditRefused(f"no version {version} of {name}") from exc
    import tempfile

    from unlearnops.certificate import CertificateError
    from unlearnops.verification import certificate_of, purge_record

    # Signed records only: the certificate (its signature checked) and the signed purge record, not tags.
    with tempfile.TemporaryDirectory() as tmp:
        try:
            certificate = certificate_of(ws, model_version.run_id, Path(tmp))
        except (MlflowException, OSError) as exc:
            raise AuditRefused(f"version {version} has no certificate (a base model: nothing was deleted for it, "
                               "so there is no forget set to audit)") from exc
        except (CertificateError, ValueError) as exc:
            raise AuditRefused(f"version {version}: its certificate does not verify ({exc})") from exc
    try:
        purged = purge_record(ws, model_version) is not None
    except model_registry.IntegrityError as exc:
        raise AuditRefused(f"version {version}: {exc}") from exc
    if purged:
        raise AuditRefused(f"version {version} was purged: its weights are gone")
    return model_version, certificate


def _forget_set(ws: Workspace, certificate: dict[str, Any], version: str) -> Dataset:
    before_rev = (certificate.get("dataset_before") or {}).get("git_rev")
    after_rev = (certificate.get("dataset_after") or {}).get("git_rev")
    try:
        before, features = _dataset_at(ws, before_rev, with_features=True)
        after, _ = _dataset_at(ws, after_rev, with_features=False)
    except Exception as exc:  # DVC raises several kinds when an object is gone from cache and remote
        raise AuditRefused(f"the samples deleted for version {version} are no longer readable (dataset "
                           f"{before_rev[:10]} purged?): audit before `unlearnops purge` ({exc})") from exc
    deleted = ~before["sample_id"].isin(after["sample_id"]) & (before["split"] == "train")
    return Dataset(features, before).select(deleted.to_numpy())


def audit_version(ws: Workspace, version: str, references: int = 4, device: str | None = None,
                  wait: float = 60.0, rmia_a: float = RMIA_A, rmia_gamma: float = RMIA_GAMMA) -> dict[str, Any]:
    """Audit ``version`` against its parent with offline LiRA and RMIA and ``references`` reference models;
    returns the audit record (signed with the workspace key), also stored with the version (MLflow artifact
    ``audits/audit-<time>.json``, tags ``unlearnops.audit_*``, an "Audit" section in ``report.html``) and in
    ``.unlearnops/audit/records/``. :class:`AuditRefused` when the version cannot be audited."""
    from unlearnops.certificate import finite_or_null, sign
    from unlearnops.keys import signing_key

    model_version, certificate = _version_context(ws, version)
    parent_version = certificate.get("parent_model_version")
    forget = _forget_set(ws, certificate, version)
    if len(forget) == 0:
        raise AuditRefused(f"version {version}: no deleted sample was in the training split; nothing to audit")
    try:  # weights checked against their signed hashes before they are read
        parent_model, model = model_registry.load_model(ws, parent_version), model_registry.load_model(ws, version)
    except model_registry.IntegrityError as exc:
        raise AuditRefused(f"version {version}: {exc}") from exc
    record = {
        "schema_version": SCHEMA,
        "audited_at": utc_now(),
        "version": str(version),
        "parent_version": parent_version,
        "dataset_before": certificate.get("dataset_before"),
        "dataset_after": certificate.get("dataset_after"),
        **run_audit(ws, parent_model, model, forget,
                    references=references, device=device, wait=wait, rmia_a=rmia_a, rmia_gamma=rmia_gamma),
    }
    record = sign(finite_or_null(record), signing_key(ws))  # NaN statistics (no sample in a stratum) → null
    _store(ws, model_version, record)
    return record


def run_audit(ws: Workspace, parent, candidate, forget: Dataset, references: int = 4, device: str | None = None,
              wait: float = 60.0, rmia_a: float = RMIA_A, rmia_gamma: float = RMIA_GAMMA) -> dict[str, Any]:
    """Both attacks on ``parent`` and ``candidate`` (torch modules) for the forgotten samples ``forget``
    (members of the parent, absent from the current dataset), against the current held-out ``gate`` half;
    returns the verdict, the metrics and the per-example scores (the body of an audit record)."""
    from unlearnops import data
    from unlearnops.datasets import holdout_part
    from unlearnops.durable import workspace_lock
    from unlearnops.model import evaluate, load_weights, pick_device

    if not 1 <= references <= MAX_REFERENCES:
        raise AuditRefused(f"--references must be between 1 and {MAX_REFERENCES}, got {references}")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    with workspace_lock(ws.state_dir, wait=wait, purpose="audit"):  # a consistent snapshot of the data
        current = load_dataset(ws.data_dir, mmap=False)
        current_version = data.current_version(ws)
    holdout = current.split("holdout")
    nonmembers = holdout.select(holdout.manifest["sample_id"].astype(str).map(holdout_part).to_numpy() == "gate")
    population = current.split("test")
    pool = current.split("train")
    overlap = set(forget.manifest["sample_id"]) & set(current.manifest["sample_id"])
    if overlap:  # forgotten samples must be gone from the data the references are drawn from
        raise AuditRefused(f"{len(overlap)} of the forgotten samples are still in the current dataset")
    seconds["data"] = round(time.perf_counter() - started, 2)

    torch_device = pick_device(device)
    mark = time.perf_counter()
    refs, pruned = reference_models(ws, pool, current_version.dvc_md5, references, torch_device)
    seconds["references"] = round(time.perf_counter() - mark, 2)

    mark = time.perf_counter()
    groups = {"forget": forget, "nonmembers": nonmembers, "population": population}
    ref_phi = {g: [] for g in groups}
    for ref in refs:
        model = load_weights(ws.model_factory, ref.path, torch_device)
        for g, s in groups.items():
            ref_phi[g].append(evaluate(model, s.features, s.labels).phi)
    ref_phi = {g: np.vstack(v) for g, v in ref_phi.items()}
    models = {"parent": parent.to(torch_device), "candidate": candidate.to(torch_device)}
    rng = np.random.default_rng(ws.settings.unlearn.seed)
    settings = ws.settings.gates
    n_f, n_n = len(forget), len(nonmembers)
    scores: dict[str, dict[str, np.ndarray]] = {"lira": {}, "rmia": {}}
    measured: dict[str, dict[str, Any]] = {"lira": {}, "rmia": {}}
    for tag, model in models.items():
        phi = {g: evaluate(model, s.features, s.labels).phi for g, s in groups.items()}
        both = np.r_[phi["forget"], phi["nonmembers"]]
        both_ref = np.hstack([ref_phi["forget"], ref_phi["nonmembers"]])
        is_nonmember = np.r_[np.zeros(n_f, bool), np.ones(n_n, bool)]
        scores["lira"][tag] = lira_offline(both, both_ref, is_nonmember)
        scores["rmia"][tag] = rmia_offline(both, both_ref, phi["population"], ref_phi["population"],
                                           a=rmia_a, gamma=rmia_gamma)
        for attack in scores:
            s = scores[attack][tag]
            measured[attack][tag] = _metrics(s[:n_f], forget.labels, s[n_f:], nonmembers.labels, settings, rng)
    attacks = {}
    for attack, by_model in measured.items():
        status, summary, power, _ = gates.membership_verdict(by_model["candidate"]["auc_ci"],
                                                             by_model["parent"]["auc_ci"], settings.mia_margin)
        attacks[attack] = {"status": status, "summary": summary, "power": power, **by_model}
    status, summary = combine(attacks)
    seconds["attacks"] = round(time.perf_counter() - mark, 2)
    seconds["total"] = round(time.perf_counter() - started, 2)

    def rows(part: Dataset, offset: int) -> list[dict[str, Any]]:
        ids = part.manifest["sample_id"].astype(str).tolist()
        return [{"sample_id": ids[i], "label": int(part.labels[i]),
                 **{f"{attack}_{tag}": round(float(scores[attack][tag][offset + i]), 5)
                    for attack in scores for tag in models}} for i in range(len(part))]

    return {
        "status": status,
        "summary": summary,
        "attacks": attacks,
        "references": {"k": len(refs), "reused": sum(r.reused for r in refs),
                       "trained": sum(not r.reused for r in refs), "pruned": pruned,
                       "models": [r.describe(ws) for r in refs], "recipe": _recipe(ws)},
        "samples": {"forget": n_f, "nonmembers": n_n, "population": len(population), "reference_pool": len(pool),
                    "nonmember_source": "holdout split, 'gate' half", "population_source": "test split",
                    "fpr_resolution": 1 / n_n if n_n else None},
        "thresholds": {"band": [0.5 - settings.mia_margin, 0.5 + settings.mia_margin],
                       "confidence": settings.confidence, "bootstrap": settings.bootstrap,
                       "rmia_a": rmia_a, "rmia_gamma": rmia_gamma},
        "dataset_current": current_version.to_dict(),
        "device": str(torch_device),
        "seconds": seconds,
        "per_example": {"forget": rows(forget, 0), "nonmembers": rows(nonmembers, n_f)},
    }


def _store(ws: Workspace, model_version, record: dict[str, Any]) -> Path:
    """Keep the record locally, log it to the version's run, tag the version, add it to ``report.html``."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from unlearnops.report import with_audit

    stamp = record["audited_at"].replace(":", "").replace("-", "")
    local = ws.state_dir / "audit" / "records" / f"v{record['version']}-{stamp}.json"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(json.dumps(record, indent=2, sort_keys=True))
    client = model_registry.client(ws)
    run_id = model_version.run_id
    artifact = f"audits/audit-{stamp}.json"
    # log_artifact keeps the file's name; the local name carries the version, the artifact's the time only.
    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / f"audit-{stamp}.json"
        named.write_text(local.read_text())
        client.log_artifact(run_id, str(named), artifact_path="audits")
        try:
            report = model_registry.download_run_artifact(ws, run_id, "report.html", Path(tmp) / "dl")
            page = with_audit(report.read_text(encoding="utf-8"), record)
            out = Path(tmp) / "report.html"
            out.write_text(page, encoding="utf-8")
            client.log_artifact(run_id, str(out))
        except (MlflowException, OSError):
            pass  # a version without a report still gets its record and tags
    name = ws.settings.project.model_name
    attacks = record["attacks"]
    tags = {"audit_status": record["status"], "audit_at": record["audited_at"], "audit_record": artifact,
            "audit_references": str(record["references"]["k"]),
            **{f"audit_{a}_auc": f"{attacks[a]['candidate']['auc']:.4f}" for a in attacks},
            **{f"audit_{a}_parent_auc": f"{attacks[a]['parent']['auc']:.4f}" for a in attacks}}
    for key, value in tags.items():
        client.set_model_version_tag(name, model_version.version, model_registry.TAG_PREFIX + key, value)
    return local
