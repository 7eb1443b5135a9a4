"""Gates: the checks a candidate must pass to be certified. Each returns pass, fail or inconclusive.

* data: a Great Expectations suite on the new dataset version;
* membership inference: forget set vs class-matched held-out non-members, AUC with a bootstrap CI,
  failing on both sides (still member-like, or less member-like than unseen data);
* forget efficacy: forget accuracy at the held-out level (Fisher's exact test);
* utility: test-accuracy drop within a bound of the parent model;
* retrain equivalence: per forgotten sample, the candidate against reference models that never trained on
  it (label agreement and an offline-LiRA score, with power shown on the parent) — the evidence an
  approximate method needs to be certified (:func:`overall_status`).

A gate judges a :class:`GateEvidence` and answers a :class:`GateResult` (see ``register_gates``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Literal

import numpy as np
from pydantic import BaseModel

from unlearnops import side_process
from unlearnops.workspace import GateSettings

if TYPE_CHECKING:  # pandas, scipy and the manifest schema are imported where a gate runs (fast start-up)
    import pandas as pd

    from unlearnops.model import Evaluation

Status = Literal["pass", "fail", "inconclusive", "not_applicable"]


@dataclass
class GateEvidence:
    """What gates judge a candidate on (see :func:`unlearnops.hookspecs.register_gates`)."""

    manifest_before: pd.DataFrame
    manifest_after: pd.DataFrame
    forget_ids: list[str]
    forget_hashes: list[str]
    forget_labels: np.ndarray
    holdout_labels: np.ndarray
    #: ``"forget"``, ``"holdout"``, ``"test"`` -> per-sample evaluation of the parent model.
    before: dict[str, Evaluation]
    #: The same for the unlearned model.
    after: dict[str, Evaluation]
    seed: int = 0
    #: Out-reference models' evaluations of the forget set (trained without it), or None when none is
    #: available; ``references_note`` says why or where they came from.
    references: list[Evaluation] | None = None
    #: K x n_forget booleans: which reference never trained on which forgotten sample (None: all of them).
    reference_out: np.ndarray | None = None
    references_note: dict[str, Any] = field(default_factory=dict)
    #: True when the candidate came from an exact method (retraining without the data).
    exact: bool = False
    #: Gates may leave named JSON-serializable records here; they are stored with the version.
    artifacts: dict[str, Any] = field(default_factory=dict)


class GateResult(BaseModel):
    """One gate's verdict on a candidate, with the numbers behind it and the thresholds it applied."""

    name: str
    status: Status
    summary: str
    metrics: dict[str, Any]
    thresholds: dict[str, Any]


FORGETTING_GATES = ("membership_inference", "forget_accuracy", "class_forgetting", "retrain_equivalence")
#: Gates whose pass is evidence that an approximate method's model behaves like one that never saw the data:
#: compared with reference models that did not train on it, or, for a class removed in full, with chance.
EVIDENCE_GATES = ("retrain_equivalence", "class_forgetting")


OVER_FORGETTING = "over-forgetting"


def applicable(result: GateResult) -> bool:
    """False for a gate that had nothing to judge in this batch (status ``not_applicable``)."""
    return result.status != "not_applicable" and result.metrics.get("applicable", True) is not False


def not_applicable(name: str, why: str) -> GateResult:
    """A gate's answer when this batch gives it nothing to judge; the verdict ignores it."""
    return GateResult(name=name, status="not_applicable", summary=f"not applicable: {why}",
                      metrics={"applicable": False}, thresholds={})


def too_few(name: str, n: int, settings: GateSettings, **metrics: Any) -> GateResult | None:
    """The verdict of a forgetting gate with fewer than ``settings.min_samples`` samples: inconclusive (no
    power), since its statistic cannot tell a no-op from forgetting at that size; None when enough."""
    if n >= settings.min_samples:
        return None
    return GateResult(name=name, status="inconclusive",
                      summary=f"no power: {n} sample{'s' if n != 1 else ''}, fewer than the {settings.min_samples} "
                      "its statistic needs", metrics={"n": n, "power": False, **metrics},
                      thresholds={"min_samples": settings.min_samples})


def classes_removed_in_full(forget_labels: np.ndarray, manifest_after: pd.DataFrame) -> set[int]:
    """Labels of forgotten samples that no sample of the new dataset version carries (class forgetting)."""
    import pandas as pd

    remaining = {int(v) for v in pd.unique(manifest_after["label"])}
    return {int(v) for v in np.unique(forget_labels)} - remaining


def overall_status(results: list[GateResult], settings: GateSettings, exact: bool = False) -> tuple[Status, list[str]]:
    """The certification verdict and its caveats. Every applicable gate must pass, with these exceptions,
    each recorded as a caveat:

    * an approximate method (``exact`` false) is certified only with evidence that its model behaves like
      models that never saw the data: an applicable gate of :data:`EVIDENCE_GATES` passed (retrain
      equivalence; class forgetting for classes removed in full) and none of them is open. Without it the
      verdict is at most inconclusive (the ladder escalates) — unless the workspace opts into
      ``heldout_proxy``, when the held-out gates decide as before and a caveat says so in plain words;
    * with ``heldout_proxy``, a membership-inference gate without power does not block when
      ``certify_without_mia_power`` is set and the forget-accuracy gate passed with power;
    * for an exact method (retraining without the data) no forgetting gate blocks, since forgetting holds by
      construction: an inconclusive one, an over-forgetting failure (a retrained model *is* the level
      unlearning aims at) and a "still member-like" failure alike — the latter measures the held-out proxy's
      bias on atypical or easy samples (a model that never saw them can still be confident on them), not the
      model. Each is a caveat in the certificate. The data and utility gates still block. (A method that
      claims exactness but returns the parent unchanged is judged as approximate by the flow.)
    """
    results = [r for r in results if applicable(r)]
    if not results:  # nothing was judged: never a pass
        return "inconclusive", []
    caveats = []
    if exact:
        excused = [r for r in results if r.name in FORGETTING_GATES and r.status == "fail"]
        caveats += [f"{r.name}: {r.summary} (exact method: retraining defines the target)"
                    if r.summary.startswith(OVER_FORGETTING) else
                    f"{r.name}: {r.summary} (exact method: the model never trained on these samples; the "
                    f"held-out reference misjudges them — models that never saw them can be this confident)"
                    for r in excused]
        results = [r for r in results if r not in excused]
    if any(r.status == "fail" for r in results):
        return "fail", []
    pending = [r for r in results if r.status == "inconclusive"]
    if exact:
        if all(r.name in FORGETTING_GATES for r in pending):
            return "pass", caveats + [f"{r.name}: {r.summary} (exact method: forgetting holds by construction)"
                                      for r in pending]
        return "inconclusive", []
    evidence = [r for r in results if r.name in EVIDENCE_GATES]
    if evidence and all(r.status == "pass" for r in evidence):
        # Behaves like models that never saw the data: the held-out proxies may stay open (recorded).
        if all(r.name in FORGETTING_GATES for r in pending):
            return "pass", caveats + [f"{r.name}: {r.summary} (held-out proxy; retrain equivalence passed)"
                                      for r in pending]
        return "inconclusive", []
    if not settings.heldout_proxy:
        return "inconclusive", []
    proxy = ("held-out proxy (opt-in heldout_proxy): this model was not compared with models that never saw the "
             "deleted data; held-out data stood in for them, which misjudges atypical or mislabeled samples")
    if not pending:
        return "pass", caveats + [proxy]
    forget_accuracy_passed = any(r.name == "forget_accuracy" and r.status == "pass" for r in results)
    only_powerless = all((r.name.startswith("membership") or r.name == "retrain_equivalence")
                         and r.metrics.get("power") is False for r in pending)
    if settings.certify_without_mia_power and forget_accuracy_passed and only_powerless:
        return "pass", caveats + [proxy] + [f"{r.name}: {r.summary}" for r in pending]
    return "inconclusive", []


def certification_grounds(results: list[GateResult], status: Status, exact: bool) -> str:
    """One line saying on what grounds a verdict certifies (or why not), for headlines and certificates."""
    if status != "pass":
        open_gates = [r for r in results if applicable(r) and r.status != "pass"]
        if open_gates and all(r.name in FORGETTING_GATES and r.metrics.get("power") is False for r in open_gates
                              if r.status == "inconclusive") and not any(r.status == "fail" for r in open_gates):
            return "not certified — every open forgetting gate lacked power (too few or too typical samples)"
        return "not certified — " + "; ".join(f"{r.name}: {r.status}" for r in open_gates)
    if exact:
        return "certified — retrained without the data (exact)"
    by_name = {r.name: r for r in results if applicable(r)}
    equivalence = by_name.get("retrain_equivalence")
    if equivalence is not None and equivalence.status == "pass":
        return "certified — behaves like models that never saw the data (evidence: " + equivalence.summary + ")"
    forgetting = by_name.get("class_forgetting")
    if forgetting is not None and forgetting.status == "pass":
        return "certified — behaves like models that never saw the class (evidence: accuracy at chance)"
    return "certified — on the held-out proxy only (opt-in heldout_proxy; not compared with retrained models)"


# -- retrain equivalence ------------------------------------------------------------------------------


def _bootstrap_mean(values: np.ndarray, settings: GateSettings, rng: np.random.Generator) -> list[float]:
    n = len(values)
    means = values[rng.integers(0, n, (settings.bootstrap, n))].mean(axis=1)
    alpha = 1 - settings.confidence
    return [float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2])]


def retrain_equivalence_gate(candidate: Evaluation, parent: Evaluation, references: list[Evaluation],
                             settings: GateSettings, seed: int = 0, out_mask: np.ndarray | None = None) -> GateResult:
    """Does the candidate behave on the forgotten samples like models that never trained on them?

    ``references`` are K reference models' evaluations of the forget set; ``out_mask`` (K x n, default all
    true) says which of them never trained on which sample (a pooled reference trained on some forgotten
    samples is an "out" model only for the others). A sample with fewer than 2 out references is not
    counted; fewer than ``min_samples`` counted samples is inconclusive (no power). Per counted sample x, over
    its out references only: the offline-LiRA score z(x) = (phi(x) - mu_out(x)) / sigma_out (phi the
    logit-scaled confidence of the true label, mu_out its mean over the out references, sigma_out their
    pooled spread; Carlini et al. 2022), the label agreement with the out references against their agreement
    among themselves, and a likelihood ratio of phi(x) under "in" (a Gaussian at the parent's phi(x), a model
    that trained on x) vs "out" (at mu_out(x)), both with sigma_out. The verdict reads the forget set's mean
    z (bootstrap CI) against ``±equivalence_margin`` and the agreement shortfall against
    ``agreement_margin``: fail when the candidate is still like the parent (CI above the band), less
    confident than retrained models (below: over-forgetting) or predicts other labels than they do; pass
    when neither, the CI inside the band, *and* the same statistics tell the parent from the references
    (power); otherwise inconclusive.
    """
    name, k = "retrain_equivalence", len(references)
    n_all = int(len(candidate.phi))
    out = np.ones((k, n_all), dtype=bool) if out_mask is None else np.asarray(out_mask, dtype=bool).reshape(k, n_all)
    n_out = out.sum(axis=0) if k else np.zeros(n_all, dtype=int)
    counted = n_out >= 2
    if k < 2:
        return GateResult(name=name, status="inconclusive", summary=f"no power: {k} reference model(s), needs 2",
                          metrics={"n": n_all, "references": k, "power": False}, thresholds={})
    n = int(counted.sum())
    small = too_few(name, n, settings, references=k, n_forget=n_all,
                    without_two_out_references=int(n_all - n))
    if small is not None:
        if n < n_all and n_all >= settings.min_samples:
            small.summary += f" ({n_all - n} of {n_all} forgotten samples have fewer than 2 references that never saw them)"
        return small
    rng = np.random.default_rng(seed)
    out = out[:, counted]
    w = out.astype(float)
    m_out = w.sum(axis=0)
    ref_phi = np.vstack([r.phi for r in references])[:, counted]
    ref_pred = np.vstack([r.predicted for r in references])[:, counted]
    phi_c, phi_p = candidate.phi[counted], parent.phi[counted]
    pred_c, pred_p = candidate.predicted[counted], parent.predicted[counted]
    mu = (ref_phi * w).sum(axis=0) / m_out
    var = (((ref_phi - mu) ** 2) * w).sum(axis=0) / (m_out - 1)
    sigma = max(float(np.sqrt(np.mean(var))), 1e-3)
    z_c, z_p = (phi_c - mu) / sigma, (phi_p - mu) / sigma
    # The reference models' own level: each judged against the other out references (leave one out), on the
    # samples where it is out and at least one other out reference remains.
    z_ref = []
    for i in range(k):
        rest = m_out - w[i]
        use = out[i] & (rest >= 1)
        if not use.any():
            z_ref.append(None)
            continue
        mu_rest = ((ref_phi * w).sum(axis=0) - ref_phi[i] * w[i])[use] / rest[use]
        z_ref.append(float(np.mean((ref_phi[i, use] - mu_rest) / sigma)))
    pair_agree = np.zeros(n)
    pair_count = np.zeros(n)
    for i in range(k):
        for j in range(i + 1, k):
            both = out[i] & out[j]
            pair_agree += (ref_pred[i] == ref_pred[j]) & both
            pair_count += both
    agree_rr = pair_agree / pair_count
    agree_c = ((ref_pred == pred_c) * w).sum(axis=0) / m_out
    agree_p = ((ref_pred == pred_p) * w).sum(axis=0) / m_out
    d_c, d_p = agree_c - agree_rr, agree_p - agree_rr
    lr_in = ((phi_c - mu) ** 2 - (phi_c - phi_p) ** 2) / (2 * sigma**2)
    ci, parent_ci = _bootstrap_mean(z_c, settings, rng), _bootstrap_mean(z_p, settings, rng)
    agree_ci, parent_agree_ci = _bootstrap_mean(d_c, settings, rng), _bootstrap_mean(d_p, settings, rng)
    m, am = settings.equivalence_margin, settings.agreement_margin
    power = bool(parent_ci[0] > m or parent_agree_ci[1] < -am)
    if ci[0] > m:
        status, summary = "fail", "still behaves like the parent on the forgotten samples (confidence above models that never saw them)"
    elif ci[1] < -m:
        status, summary = "fail", OVER_FORGETTING + ": less confident on the forgotten samples than models that never saw them"
    elif agree_ci[1] < -am:
        status, summary = "fail", "predicts other labels on the forgotten samples than models that never saw them"
    elif ci[0] >= -m and ci[1] <= m and power:
        status, summary = "pass", (f"on the {n} forgotten samples it agrees with models that never saw them on "
                                   f"{np.mean(agree_c):.0%} of predictions (the parent on {np.mean(agree_p):.0%}; "
                                   f"they among themselves on {np.mean(agree_rr):.0%}), mean LiRA score {np.mean(z_c):+.2f} "
                                   f"CI [{ci[0]:+.2f}, {ci[1]:+.2f}] within ±{m}")
    elif ci[0] >= -m and ci[1] <= m:
        status, summary = "inconclusive", ("no power: the parent already behaves like models that never saw these "
                                           "samples, so a no-op cannot be told from forgetting")
    else:
        status, summary = "inconclusive", "confidence interval too wide to decide at this sample size"
    return GateResult(
        name=name, status=status, summary=summary,
        metrics={"n": n, "n_forget": n_all, "without_two_out_references": int(n_all - n),
                 "out_references_per_sample": float(np.mean(m_out)), "references": k, "power": power,
                 "score": float(np.mean(z_c)), "ci": ci,
                 "parent_score": float(np.mean(z_p)), "parent_ci": parent_ci,
                 "reference_scores": z_ref, "sigma_out": sigma,
                 "agreement": float(np.mean(agree_c)), "parent_agreement": float(np.mean(agree_p)),
                 "reference_agreement": float(np.mean(agree_rr)), "agreement_gap_ci": agree_ci,
                 "parent_agreement_gap_ci": parent_agree_ci,
                 "closer_to_parent": float(np.mean(lr_in > 0)),
                 "parent_label_kept": float(np.mean(pred_c == pred_p))},
        thresholds={"equivalence_margin": m, "agreement_margin": am, "confidence": settings.confidence,
                    "bootstrap": settings.bootstrap, "min_out_references": 2},
    )


# -- data gate --------------------------------------------------------------------------------------


#: The last data gates run in this process, by a digest of their inputs: a batch's later rungs validate the
#: same dataset version against the same deletion, so its GX validation is run once per batch.
_data_gate_memo: dict[str, tuple[GateResult, dict]] = {}


def data_gate(
    before: pd.DataFrame, after: pd.DataFrame, removed_ids: list[str], removed_hashes: list[str], settings: GateSettings
) -> tuple[GateResult, dict]:
    """Validate the new manifest with a GX suite; returns the gate result and GX's full validation JSON.
    The same inputs (compared by content) get a copy of the same answer without running GX again; GX runs in
    the command's side process when there is one (:mod:`unlearnops.side_process`)."""
    import copy
    import hashlib

    import pandas as pd

    digest = hashlib.sha256()
    for frame in (before, after):
        digest.update(repr((list(frame.columns), [str(t) for t in frame.dtypes], len(frame))).encode())
        digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    digest.update(repr((list(map(str, removed_ids)), list(map(str, removed_hashes)))).encode())
    digest.update(settings.model_dump_json().encode())
    key = digest.hexdigest()
    if key not in _data_gate_memo:
        _data_gate_memo.clear()
        _data_gate_memo[key] = side_process.run(_validated_manifest, before, after, removed_ids, removed_hashes,
                                                settings)
    result, validation = _data_gate_memo[key]
    return result.model_copy(deep=True), copy.deepcopy(validation)


def _validated_manifest(
    before: pd.DataFrame, after: pd.DataFrame, removed_ids: list[str], removed_hashes: list[str], settings: GateSettings
) -> tuple[GateResult, dict]:
    import great_expectations as gx  # slow import (2-6 s): only when the gate runs
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from unlearnops.datasets import MANIFEST_COLUMNS

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("dataset").add_dataframe_asset("manifest")
    batch = asset.add_batch_definition_whole_dataframe("version").get_batch(batch_parameters={"dataframe": after})

    # A class whose every sample the request removes (class forgetting) is explained by the request; the
    # label checks guard the remaining classes against accidental over-deletion.
    removed_mask = before["sample_id"].isin(set(removed_ids))
    kept_labels = set(before.loc[~removed_mask, "label"])
    label_share = before.loc[before["label"].isin(kept_labels), "label"].value_counts(normalize=True).sort_index()
    expected_rows = len(before) - len(set(removed_ids) & set(before["sample_id"]))
    suite = gx.ExpectationSuite(name="dataset_version")
    expectations = [
        gxe.ExpectColumnValuesToNotBeInSet(column="sample_id", value_set=sorted(removed_ids)),
        gxe.ExpectColumnValuesToNotBeInSet(column="content_sha256", value_set=sorted(removed_hashes)),
        gxe.ExpectTableRowCountToEqual(value=expected_rows),
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(MANIFEST_COLUMNS)),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        gxe.ExpectColumnValuesToBeOfType(column="label", type_="int64"),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=[int(v) for v in label_share.index]),
        gxe.ExpectColumnKLDivergenceToBeLessThan(
            column="label",
            partition_object={"values": [int(v) for v in label_share.index], "weights": label_share.tolist()},
            threshold=settings.label_kl_max,
        ),
    ]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in MANIFEST_COLUMNS]
    for expectation in expectations:
        suite.add_expectation(expectation)
    suite = context.suites.add(suite)
    validation = batch.validate(suite)
    failed = [r.expectation_config.type for r in validation.results if not r.success]
    result = GateResult(
        name="data",
        status="pass" if validation.success else "fail",
        summary="all expectations met" if not failed else "failed: " + ", ".join(sorted(set(failed))),
        metrics={
            "rows_before": len(before),
            "rows_after": len(after),
            "removed": len(removed_ids),
            "classes_removed": sorted(int(v) for v in set(before["label"]) - kept_labels),
            "expectations": len(validation.results),
            "failed": failed,
        },
        thresholds={"expected_rows": expected_rows, "label_kl_max": settings.label_kl_max},
    )
    return result, validation.to_json_dict()


# -- membership inference -----------------------------------------------------------------------------


def class_matched_auc(member_scores, member_labels, nonmember_scores, nonmember_labels) -> float:
    """ROC AUC of "member" vs "non-member" where pairs are compared only within the same class,
    weighted by the members per class: the non-members are matched to the members' class mix."""
    member_scores, nonmember_scores = np.asarray(member_scores), np.asarray(nonmember_scores)
    return _matched_auc(member_scores, _class_groups(np.asarray(member_labels)),
                        nonmember_scores, _class_groups(np.asarray(nonmember_labels)))


def _class_groups(labels: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """(label, indices of the samples with that label), in label order."""
    return [(label, np.flatnonzero(labels == label)) for label in np.unique(labels)]


def _matched_auc(member_scores: np.ndarray, member_groups, nonmember_scores: np.ndarray, nonmember_groups) -> float:
    """:func:`class_matched_auc` over class groups: ``(label, indices into the scores)`` pairs."""
    nonmembers_of = dict(nonmember_groups)
    total, weight = 0.0, 0
    for label, member_idx in member_groups:
        nonmember_idx = nonmembers_of.get(label)
        if nonmember_idx is None or len(nonmember_idx) == 0:
            continue
        m, n = member_scores[member_idx], np.sort(nonmember_scores[nonmember_idx])
        if np.isnan(m).any() or np.isnan(n).any():
            return float("nan")
        # Mann-Whitney U: pairs in which the member scores higher, ties counting half (as rank sums count them).
        below = np.searchsorted(n, m, side="left")
        not_above = np.searchsorted(n, m, side="right")
        u = float(below.sum()) + 0.5 * float((not_above - below).sum())
        total += u / (len(m) * len(n)) * len(m)
        weight += len(m)
    return total / weight if weight else float("nan")


def stratified_bootstrap(member_scores, member_labels, nonmember_scores, nonmember_labels, resamples: int,
                         rng: np.random.Generator) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
    """``resamples`` bootstrap resamples stratified by class: each class's members, then each class's
    non-members, drawn with replacement within the class (label order). Yields the resample's class-matched
    AUC with its member and non-member indices."""
    member_scores, nonmember_scores = np.asarray(member_scores), np.asarray(nonmember_scores)
    member_groups = _class_groups(np.asarray(member_labels))
    nonmember_groups = _class_groups(np.asarray(nonmember_labels))
    for _ in range(resamples):
        drawn_members = [(label, rng.choice(idx, size=len(idx), replace=True)) for label, idx in member_groups]
        drawn_nonmembers = [(label, rng.choice(idx, size=len(idx), replace=True)) for label, idx in nonmember_groups]
        auc = _matched_auc(member_scores, drawn_members, nonmember_scores, drawn_nonmembers)
        yield (auc, np.concatenate([idx for _, idx in drawn_members]),
               np.concatenate([idx for _, idx in drawn_nonmembers]))


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """Share of members scoring above the threshold that only ``fpr`` of non-members exceed."""
    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        return float("nan")
    threshold = np.quantile(nonmember_scores, 1 - fpr, method="higher")
    return float(np.mean(member_scores > threshold))


def _auc_with_ci(member_phi, member_labels, nonmember_phi, nonmember_labels, settings, rng):
    auc = class_matched_auc(member_phi, member_labels, nonmember_phi, nonmember_labels)
    aucs, tprs = [], []
    for resampled_auc, fi, hi in stratified_bootstrap(member_phi, member_labels, nonmember_phi, nonmember_labels,
                                                      settings.bootstrap, rng):
        aucs.append(resampled_auc)
        tprs.append(tpr_at_fpr(member_phi[fi], nonmember_phi[hi], 0.01))
    alpha = 1 - settings.confidence
    ci = [float(v) for v in np.nanquantile(aucs, [alpha / 2, 1 - alpha / 2])]
    tpr_ci = [float(v) for v in np.nanquantile(tprs, [alpha / 2, 1 - alpha / 2])]
    return auc, ci, tpr_at_fpr(member_phi, nonmember_phi, 0.01), tpr_ci


def membership_verdict(ci, parent_ci, margin: float) -> tuple[Status, str, bool, tuple[float, float]]:
    """Judge a membership attack's AUC confidence interval against the band ``0.5 ± margin``, with power
    shown on the parent (its CI wholly above the band). Returns status, summary, power and the band; shared
    by the per-batch gate and the audit (:mod:`unlearnops.audit`)."""
    band = (0.5 - margin, 0.5 + margin)
    power = bool(parent_ci[0] > band[1])
    low, high = ci
    if low > band[1]:
        return "fail", "forget set still looks like training members", power, band
    if high < band[0] and parent_ci[1] < band[0]:
        return "inconclusive", ("atypical forget set: the parent already scored it below unseen data (samples it "
                                "never fit, e.g. labels no other sample supports), so a population attack cannot "
                                "judge it; audit mode can"), power, band
    if high < band[0]:
        return "fail", OVER_FORGETTING + ": forget set looks less member-like than unseen data", power, band
    if low >= band[0] and high <= band[1] and power:
        return "pass", "forget set indistinguishable from held-out non-members", power, band
    if low >= band[0] and high <= band[1]:
        return "inconclusive", ("no power: the attack could not detect the parent model's membership either, so "
                                "it cannot tell a no-op from forgetting"), power, band
    return "inconclusive", "confidence interval too wide to decide at this sample size", power, band


def mia_gate(
    forget_phi: np.ndarray,
    forget_labels: np.ndarray,
    holdout_phi: np.ndarray,
    holdout_labels: np.ndarray,
    settings: GateSettings,
    parent_forget_phi: np.ndarray,
    parent_holdout_phi: np.ndarray,
    seed: int = 0,
    name: str = "membership_inference",
) -> GateResult:
    """Population attack on the logit-scaled confidence log(p/(1-p)) of the true label (the per-sample loss
    ranks samples identically), forget set vs class-matched held-out non-members.

    Fail when the AUC's CI lies wholly above ``0.5 + mia_margin`` (still member-like) or wholly below
    ``0.5 - mia_margin`` (over-forgetting — unless the parent was already there: an atypical forget set the
    attack cannot judge, inconclusive). Pass when the CI sits inside the band *and* the same attack
    detected the parent model's membership (CI wholly above the band) — otherwise the attack has no power
    here and cannot tell a no-op from forgetting, so the verdict is inconclusive with ``power: false``.
    """
    small = too_few(name, int(len(forget_phi)), settings, n_forget=int(len(forget_phi)))
    if small is not None:
        return small
    rng = np.random.default_rng(seed)
    auc, ci, tpr, tpr_ci = _auc_with_ci(forget_phi, forget_labels, holdout_phi, holdout_labels, settings, rng)
    parent_auc, parent_ci, parent_tpr, _ = _auc_with_ci(
        parent_forget_phi, forget_labels, parent_holdout_phi, holdout_labels, settings, rng
    )
    # The same attack on two disjoint halves of the held-out data: the level "indistinguishable" means.
    order = rng.permutation(len(holdout_phi))
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2 :]
    reference = class_matched_auc(
        holdout_phi[half_a], holdout_labels[half_a], holdout_phi[half_b], holdout_labels[half_b]
    )
    status, summary, power, band = membership_verdict(ci, parent_ci, settings.mia_margin)
    return GateResult(
        name=name,
        status=status,
        summary=summary,
        metrics={
            "auc": auc,
            "ci": ci,
            "tpr_at_1pct_fpr": tpr,
            "tpr_at_1pct_fpr_ci": tpr_ci,
            "parent_auc": parent_auc,
            "parent_ci": parent_ci,
            "parent_tpr_at_1pct_fpr": parent_tpr,
            "power": power,
            "reference_auc": reference,
            "n_forget": int(len(forget_phi)),
            "n_nonmembers": int(len(holdout_phi)),
        },
        thresholds={"band": list(band), "confidence": settings.confidence, "bootstrap": settings.bootstrap},
    )


def _fisher(correct: np.ndarray, holdout_correct: np.ndarray, alternative: str) -> float:
    k, n = int(np.sum(correct)), len(correct)
    kh, nh = int(np.sum(holdout_correct)), len(holdout_correct)
    from scipy.stats import fisher_exact

    return float(fisher_exact([[k, n - k], [kh, nh - kh]], alternative=alternative).pvalue)


def forget_accuracy_gate(
    forget_correct: np.ndarray,
    holdout_correct: np.ndarray,
    parent_forget_correct: np.ndarray,
    parent_holdout_correct: np.ndarray,
    settings: GateSettings,
) -> GateResult:
    """Forget accuracy should sit at the held-out level (Fisher's exact test, forget vs held-out).

    Fail when it is significantly above ``holdout + margin`` (not forgotten) or below ``holdout - margin``
    (over-forgetting; inconclusive instead when the parent was already significantly below: an atypical
    forget set). Pass when neither, provided the same test flags the parent model's forget accuracy;
    otherwise (too few samples, or a parent already at the held-out level) nothing tells a no-op from
    forgetting and the verdict is inconclusive.
    """
    n = int(len(forget_correct))
    alpha = 1 - settings.confidence
    holdout_accuracy = float(np.mean(holdout_correct))
    margin = settings.forget_accuracy_margin
    if n == 0:
        return GateResult(name="forget_accuracy", status="inconclusive",
                          summary="no forgotten sample was in the training split", metrics={"n": 0},
                          thresholds={"margin": margin, "alpha": alpha})
    small = too_few("forget_accuracy", n, settings)
    if small is not None:
        return small
    accuracy = float(np.mean(forget_correct))
    parent_accuracy = float(np.mean(parent_forget_correct))
    p_above = _fisher(forget_correct, holdout_correct, "greater")
    p_below = _fisher(forget_correct, holdout_correct, "less")
    parent_p_above = _fisher(parent_forget_correct, parent_holdout_correct, "greater")
    parent_p_below = _fisher(parent_forget_correct, parent_holdout_correct, "less")
    power = parent_p_above < alpha
    if accuracy > holdout_accuracy + margin and p_above < alpha:
        status, summary = "fail", "forget accuracy significantly above held-out accuracy"
    elif accuracy < holdout_accuracy - margin and p_below < alpha and parent_p_below < alpha:
        status, summary = "inconclusive", (
            f"atypical forget set: the parent's accuracy on it ({parent_accuracy:.3f}) was already significantly "
            "below held-out, so held-out accuracy is not the level a retrained model would reach"
        )
    elif accuracy < holdout_accuracy - margin and p_below < alpha:
        status, summary = "fail", OVER_FORGETTING + ": forget accuracy significantly below held-out accuracy"
    elif power:
        status, summary = "pass", "forget accuracy consistent with held-out accuracy"
    else:
        status, summary = "inconclusive", (
            f"no power: with {n} samples the parent's forget accuracy ({parent_accuracy:.3f}) is not "
            "significantly above held-out either, so a no-op cannot be told from forgetting"
        )
    return GateResult(
        name="forget_accuracy",
        status=status,
        summary=summary,
        metrics={
            "forget_accuracy": accuracy,
            "holdout_accuracy": holdout_accuracy,
            "parent_forget_accuracy": parent_accuracy,
            "n": n,
            "n_holdout": int(len(holdout_correct)),
            "p_above": p_above,
            "p_below": p_below,
            "parent_p_above": parent_p_above,
            "parent_p_below": parent_p_below,
            "power": power,
        },
        thresholds={"margin": margin, "alpha": alpha},
    )


def class_forgetting_gate(
    forget_correct: np.ndarray, parent_forget_correct: np.ndarray, n_classes: int, settings: GateSettings
) -> GateResult:
    """For classes a request removes in full, held-out accuracy is no reference (a retrained model never saw
    the class): the model's accuracy on the forgotten samples must be at chance (1 / classes) or below.

    Fail when it is significantly above ``chance + forget_accuracy_margin`` (binomial test); pass when not,
    provided the same test flags the parent (it knew the class); otherwise inconclusive.
    """
    from scipy.stats import binomtest

    n, alpha = int(len(forget_correct)), 1 - settings.confidence
    small = too_few("class_forgetting", n, settings)
    if small is not None:
        return small
    chance = 1.0 / max(n_classes, 1)
    level = min(1.0, chance + settings.forget_accuracy_margin)
    k, parent_k = int(np.sum(forget_correct)), int(np.sum(parent_forget_correct))
    p_above = float(binomtest(k, n, level, alternative="greater").pvalue) if n else 1.0
    parent_p_above = float(binomtest(parent_k, n, level, alternative="greater").pvalue) if n else 1.0
    power = parent_p_above < alpha
    if n and p_above < alpha:
        status, summary = "fail", "the model still recognizes the forgotten class(es) above chance"
    elif power:
        status, summary = "pass", "accuracy on the forgotten class(es) at or below chance"
    else:
        status, summary = "inconclusive", "no power: the parent's accuracy on the class was not above chance either"
    return GateResult(
        name="class_forgetting", status=status, summary=summary,
        metrics={"forget_accuracy": k / n if n else None, "parent_forget_accuracy": parent_k / n if n else None,
                 "chance": chance, "n": n, "p_above": p_above, "parent_p_above": parent_p_above, "power": power},
        thresholds={"level": level, "alpha": alpha},
    )


def utility_gate(test_accuracy_before: float, test_accuracy_after: float, settings: GateSettings) -> GateResult:
    drop = test_accuracy_before - test_accuracy_after
    ok = drop <= settings.utility_max_drop
    return GateResult(
        name="utility",
        status="pass" if ok else "fail",
        summary=f"test accuracy drop {drop:+.4f}" + ("" if ok else " exceeds the bound"),
        metrics={"test_accuracy_before": test_accuracy_before, "test_accuracy_after": test_accuracy_after,
                 "drop": drop},
        thresholds={"max_drop": settings.utility_max_drop},
    )
