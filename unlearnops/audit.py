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
halves of the current dataset's training split (half of its subject-keyed parts each, see
:func:`reference_parts_of`) — data that the forget set, the non-members and the population are all outside of.

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


#: Version of the reference design (written into the recipe: references of another design are not reused).
REFERENCE_DESIGN = "subject-parts/v1"


def _recipe(ws: Workspace) -> dict[str, Any]:
    """What a reference model's training depends on besides its data: reused only when it is unchanged."""
    params = ws.params.train.model_dump()
    params.pop("seed", None)
    return {"model_factory": ws.settings.project.model_factory,
            "train_function": ws.settings.project.train_function,
            "train_params": params, "fraction": REFERENCE_FRACTION, "design": REFERENCE_DESIGN,
            "parts": ws.settings.gates.reference_parts}


def _recipe_dir(ws: Workspace) -> Path:
    """The pool's folder for the current recipe: not the dataset version, so references outlive versions."""
    digest = hashlib.sha256(json.dumps(_recipe(ws), sort_keys=True).encode()).hexdigest()[:12]
    return references_dir(ws) / f"recipe-{digest}"


def sample_parts(ws: Workspace, manifest, parts: int | None = None) -> np.ndarray:
    """The reference part (0..parts-1) of each manifest row: a keyed hash (the workspace's subject key,
    :func:`unlearnops.keys.keyed_hash`) of its subject id, of its sample id when it has none, so all of a
    subject's samples share a part and no raw subject id is written anywhere."""
    from unlearnops.keys import keyed_hash, subject_key

    parts = parts or ws.settings.gates.reference_parts
    key = subject_key(ws)
    subjects = manifest["subject_id"].astype("string").fillna("").to_numpy(dtype=object)
    samples = manifest["sample_id"].astype(str).to_numpy()
    units = [f"subject:{s}" if str(s).strip() else f"sample:{x}" for s, x in zip(subjects, samples)]
    cache: dict[str, int] = {}
    out = np.empty(len(units), dtype=np.int64)
    for i, unit in enumerate(units):
        if unit not in cache:
            cache[unit] = int(keyed_hash(key, "reference-part:" + unit)[:8], 16) % parts
        out[i] = cache[unit]
    return out


def reference_parts_of(index: int, parts: int) -> list[int]:
    """The parts reference ``index`` trains on. References come in complementary pairs (2j, 2j+1): pair j
    draws a seeded half of the parts, its even member trains on it and its odd member on the rest, so every
    part is left out by exactly one model of each pair (by K/2 of K references, whatever the batch)."""
    seed = int(hashlib.sha256(f"{REFERENCE_DESIGN}:{parts}:{index // 2}".encode()).hexdigest()[:8], 16)
    half = set(np.random.default_rng(seed).permutation(parts)[: parts // 2].tolist())
    chosen = half if index % 2 == 0 else set(range(parts)) - half
    return sorted(chosen)


@dataclass
class PoolState:
    """The reference pool against the current training ids: by index, the valid model (all its training
    ids still present), the stale ones (trained on a sample deleted since), and the indices below K with no
    valid model."""

    valid: dict[int, Reference]
    stale: list[Reference]
    missing: list[int]


def pool_state(ws: Workspace, train_ids: set[str], k: int) -> PoolState:
    """Classify the cached references of the current recipe against ``train_ids``; older recipes' files are
    reported stale too (they are not reusable and may hold deleted data)."""
    recipe = _recipe(ws)
    valid: dict[int, Reference] = {}
    stale = []
    for ref in _cached(ws):
        index = ref.meta.get("index")
        if ref.meta.get("recipe") != recipe:
            if not set(ref.meta.get("train_ids", [])) <= train_ids:
                stale.append(ref)
            continue
        if not set(ref.meta["train_ids"]) <= train_ids:
            stale.append(ref)
        elif index not in valid:
            valid[index] = ref
    return PoolState(valid, stale, [i for i in range(k) if i not in valid])


def train_reference(ws: Workspace, pool: Dataset, index: int, device, dataset_md5: str | None = None,
                    report=None) -> Reference:
    """Train and cache reference ``index`` on the parts :func:`reference_parts_of` gives it, of the training
    split ``pool``; ``report(epoch, loss)`` hears of each epoch."""
    from unlearnops.model import save_weights, seed_everything

    parts = ws.settings.gates.reference_parts
    ids = pool.manifest["sample_id"].astype(str).to_numpy()
    chosen = reference_parts_of(index, parts)
    mask = np.isin(sample_parts(ws, pool.manifest, parts), chosen)
    train_ids = sorted(ids[mask].tolist())
    digest = hashlib.sha256("\n".join(train_ids).encode()).hexdigest()[:12]
    seed = int(hashlib.sha256(f"{index}:{digest}".encode()).hexdigest()[:8], 16) % 2**31
    target_dir = _recipe_dir(ws)
    target_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    params = {**ws.params.train.model_dump(), "seed": seed}
    seed_everything(seed)  # before the factory draws the initial weights
    model = call_training(ws.train_function, ws.model_factory(),
                          Samples(np.asarray(pool.features[mask]), pool.labels[mask], ids[mask].tolist()),
                          device=device, progress=report, **params)
    stem = f"{index}-{digest}"
    path = target_dir / f"{stem}.pt"
    meta = {"dataset_md5": dataset_md5, "index": index, "parts": chosen, "seed": seed, "n_train": int(mask.sum()),
            "recipe": _recipe(ws), "seconds": round(time.perf_counter() - started, 2), "created_at": utc_now(),
            "train_ids": train_ids}
    meta["sha256"] = save_weights(model, path)
    atomic_write_text(target_dir / f"{stem}.json", json.dumps(meta))  # written last: marks it complete
    return Reference(path, meta, reused=False)


def top_up(ws: Workspace, pool: Dataset, k: int, device, dataset_md5: str | None = None,
           progress=None) -> tuple[list[Reference], list[Reference]]:
    """Train the references 0..k-1 that have no valid cached model on the training split ``pool``; returns
    ``(valid before, trained)``. ``progress`` is a :func:`unlearnops.progress.model_progress` reporter."""
    state = pool_state(ws, set(pool.manifest["sample_id"].astype(str)), k)
    trained = []
    for n, index in enumerate(state.missing, start=1):
        if progress is None:
            trained.append(train_reference(ws, pool, index, device, dataset_md5))
            continue
        with progress(n, len(state.missing), index) as report:
            trained.append(train_reference(ws, pool, index, device, dataset_md5, report=report.epoch))
            report.done(trained[-1].meta)
    return [state.valid[i] for i in sorted(state.valid) if i < k], trained


def stale_references(ws: Workspace, train_ids: set[str] | None = None) -> list[Path]:
    """Cached reference models (weights and id files) trained on a sample that is not in ``train_ids``
    (default: the current dataset's training split), i.e. deleted since: they still carry its influence."""
    cached = _cached(ws)
    if cached and train_ids is None:
        manifest = load_dataset(ws.data_dir).manifest
        train_ids = set(manifest.loc[manifest["split"] == "train", "sample_id"].astype(str))
    return [path for ref in cached if not set(ref.meta["train_ids"]) <= train_ids
            for path in (ref.path, ref.path.with_suffix(".json"))]


def prune_references(ws: Workspace, train_ids: set[str] | None = None) -> list[str]:
    """Delete every cached reference model trained on a sample not in ``train_ids`` (default: the current
    dataset's training split, read only when references are cached); returns the weights' paths.
    ``unlearnops purge`` removes the same files (:func:`stale_references`)."""
    removed = []
    for path in stale_references(ws, train_ids):
        path.unlink(missing_ok=True)
        if path.suffix == ".pt":
            removed.append(str(path.relative_to(ws.root)))
    return removed


def reference_models(ws: Workspace, pool: Dataset, dataset_md5: str, k: int, device, train_missing: bool = True,
                     progress=None) -> tuple[list[Reference], list[str]]:
    """K reference models for the training pool ``pool`` (the current training split), reused from the cache
    where sound, trained and cached otherwise (``refs/recipe-<digest>/<index>-<ids digest>.pt`` with a
    ``.json`` beside it holding the training-set ids, parts, seed and recipe).

    Reuse rule: a cached reference model may serve only if every sample it was trained on is still in the
    current training data (its training ids are a subset of ``pool``) and it was trained with the same
    recipe (model factory, training function, ``params.yaml`` train section, part design). Dataset versions
    only ever lose samples, so such a model never saw any sample deleted up to now, and it is what reference
    ``index`` drawn from today's data could have been; the cache is filed by recipe, not dataset version, so
    it outlives versions. A model that fails the rule because samples were deleted since is removed
    (:func:`prune_references`). With ``train_missing`` false only valid cached models are returned (possibly
    fewer than K); ``progress`` as for :func:`top_up`. Returns the references (reused first) and the paths
    pruned."""
    pruned = prune_references(ws, set(pool.manifest["sample_id"].astype(str)))
    if train_missing:
        valid, trained = top_up(ws, pool, k, device, dataset_md5, progress=progress)
    else:
        state = pool_state(ws, set(pool.manifest["sample_id"].astype(str)), k)
        valid, trained = [state.valid[i] for i in sorted(state.valid) if i < k], []
    return valid + trained, pruned


def pool_status(ws: Workspace, k: int | None = None) -> dict[str, Any]:
    """The reference pool against the current dataset: per reference index valid / stale / missing, with
    its parts, training size and seconds, per part how many valid references leave it out (the "out" models
    a forgotten sample of that part gets), and totals."""
    k = ws.settings.gates.references if k is None else k
    manifest = load_dataset(ws.data_dir).manifest
    train = manifest.loc[manifest["split"] == "train"]
    state = pool_state(ws, set(train["sample_id"].astype(str)), k)
    parts = ws.settings.gates.reference_parts
    sizes = np.bincount(sample_parts(ws, train, parts), minlength=parts)

    def row(ref: Reference, status: str) -> dict[str, Any]:
        return {"index": ref.meta.get("index"), "status": status, "parts": ref.meta.get("parts"),
                "n_train": ref.meta.get("n_train"), "seconds": ref.meta.get("seconds"),
                "created_at": ref.meta.get("created_at"), "path": str(ref.path.relative_to(ws.root))}

    models = [row(state.valid[i], "valid") for i in sorted(state.valid)]
    models += [row(r, "stale") for r in state.stale]
    models += [{"index": i, "status": "missing", "parts": reference_parts_of(i, parts)} for i in state.missing]
    out_by_part = []
    for p in range(parts):
        out = [i for i, r in state.valid.items() if i < k and p not in (r.meta.get("parts") or [])]
        out_by_part.append({"part": p, "train_samples": int(sizes[p]), "valid_out_references": len(out),
                            "missing_out_references": sum(p not in reference_parts_of(i, parts)
                                                          for i in state.missing)})
    valid_k = [r for i, r in state.valid.items() if i < k]
    return {"k": k, "parts": parts, "design": REFERENCE_DESIGN,
            "valid": len(valid_k), "stale": len(state.stale), "missing": len(state.missing),
            "seconds_spent": round(sum(r.meta.get("seconds", 0) for r in valid_k), 2),
            "models": models, "by_part": out_by_part,
            "directory": str(_recipe_dir(ws).relative_to(ws.root))}


class ReferencePoolRefused(ValueError):
    """A reference-pool request that cannot be served (K outside 1-8, no trained base data)."""


def train_pool(ws: Workspace, k: int | None = None, device: str | None = None, wait: float = 60.0,
               progress=None) -> dict[str, Any]:
    """Top the reference pool up to ``k`` valid references (default ``gates.references``): delete stale ones,
    train the missing indices on the current training split under the workspace lock; returns what was
    reused, trained and pruned, the seconds spent and the pool's status afterwards."""
    from unlearnops.durable import workspace_lock
    from unlearnops.model import pick_device

    k = ws.settings.gates.references if k is None else k
    if not 1 <= k <= MAX_REFERENCES:
        raise ReferencePoolRefused(f"k must be between 1 and {MAX_REFERENCES}, got {k}")
    started = time.perf_counter()
    with workspace_lock(ws.state_dir, wait=wait, purpose="references train"):
        current = load_dataset(ws.data_dir, mmap=False)
        pool = current.split("train")
        pruned = prune_references(ws, set(pool.manifest["sample_id"].astype(str)))
        valid, trained = top_up(ws, pool, k, pick_device(device), data_md5(ws), progress=progress)
    return {"k": k, "reused": len(valid), "trained": len(trained), "pruned_stale": len(pruned),
            "training_seconds": round(sum(r.meta["seconds"] for r in trained), 2),
            "seconds_per_reference": [r.meta["seconds"] for r in trained],
            "seconds": round(time.perf_counter() - started, 2), "status": pool_status(ws, k)}


def gate_references(ws: Workspace, forget_ids: list[str], forget_features: np.ndarray, forget_labels: np.ndarray,
                    k: int, train_missing: bool = True, device=None, progress=None):
    """Evaluations of the forget set by up to ``k`` pooled reference models, the K x n mask of which never
    trained on which forgotten sample, and a note saying where they came from and what they cost. Returns
    ``(None, None, note)`` when there is none (``note["why"]``).

    Valid references never saw any forgotten sample (out for all). A reference made stale by *this* batch
    (its training ids are all in the current data plus the forget set) still never saw the forgotten
    samples outside its parts: it serves as an "out" model for those only, and is deleted once the batch is
    finalized (:func:`prune_references`; ``purge`` deletes it too). References stale from an earlier deletion are
    deleted now. With ``train_missing`` the indices with no valid model are trained first (on today's data,
    out for all)."""
    from unlearnops.model import evaluate, load_weights, pick_device

    started = time.perf_counter()
    current = load_dataset(ws.data_dir, mmap=False)
    forget_ids = [str(x) for x in forget_ids]
    if set(forget_ids) & set(current.manifest["sample_id"].astype(str)):
        return None, None, {"why": "the forgotten samples are still in the current dataset"}
    if k < 1:
        return None, None, {"why": "the workspace asks for none (gates.references = 0)"}
    torch_device = pick_device(device)
    pool = current.split("train")
    train_ids = set(pool.manifest["sample_id"].astype(str))
    pruned = prune_references(ws, train_ids | set(forget_ids))  # stale from earlier batches
    trained: list[Reference] = []
    if train_missing:
        _, trained = top_up(ws, pool, k, device=torch_device, dataset_md5=data_md5(ws), progress=progress)
    state = pool_state(ws, train_ids, k)
    chosen = {i: r for i, r in state.valid.items() if i < k}
    for ref in state.stale:  # stale through this batch: an out model for the forgotten samples it never saw
        index = ref.meta.get("index")
        if ref.meta.get("recipe") == _recipe(ws) and index is not None and index < k and index not in chosen:
            chosen[index] = ref
    refs = [chosen[i] for i in sorted(chosen)]
    trained_paths = {r.path for r in trained}
    note = {"k": len(refs), "reused": sum(r.path not in trained_paths for r in refs), "trained": len(trained),
            "stale_this_batch": sum(not set(r.meta["train_ids"]) <= train_ids for r in refs),
            "pruned_stale": len(pruned),
            "training_seconds": round(sum(r.meta.get("seconds", 0) for r in trained), 2),
            "source": f"{ws.settings.gates.reference_parts} subject-keyed parts of the training split, each "
                      f"reference on half of them (complementary pairs), cached in "
                      f"{references_dir(ws).relative_to(ws.root)}"}
    if not refs:
        return None, None, {**note, "why": "none cached and gates.train_references is off"}
    out = np.vstack([~np.isin(forget_ids, r.meta["train_ids"]) for r in refs])
    evaluations = [evaluate(load_weights(ws.model_factory, r.path, torch_device), forget_features, forget_labels)
                   for r in refs]
    note["out_references_per_sample"] = round(float(out.sum(axis=0).mean()), 2) if out.size else 0.0
    note["seconds"] = round(time.perf_counter() - started, 2)
    return evaluations, out, note


def data_md5(ws: Workspace) -> str:
    """The DVC md5 of the current dataset version (recorded with each reference trained)."""
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
    for resampled_auc, mi, ni in gates.stratified_bootstrap(member, member_labels, nonmember, nonmember_labels,
                                                            settings.bootstrap, rng):
        boot["auc"].append(resampled_auc)
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
