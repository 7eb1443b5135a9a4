"""Gates: the checks a candidate must pass to be certified. Each returns pass, fail or inconclusive.

* data: a Great Expectations suite on the new dataset version;
* membership inference: forget set vs class-matched held-out non-members, AUC with a bootstrap CI,
  failing on both sides (still member-like, or less member-like than unseen data);
* forget efficacy: forget accuracy at the held-out level (binomial test);
* utility: test-accuracy drop within a bound of the parent model.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy.stats import binomtest, rankdata

from unlearnops.datasets import MANIFEST_COLUMNS
from unlearnops.workspace import GateSettings

Status = Literal["pass", "fail", "inconclusive"]


class GateResult(BaseModel):
    name: str
    status: Status
    summary: str
    metrics: dict[str, Any]
    thresholds: dict[str, Any]


def overall_status(results: list[GateResult]) -> Status:
    statuses = {r.status for r in results}
    if "fail" in statuses:
        return "fail"
    if "inconclusive" in statuses:
        return "inconclusive"
    return "pass"


# -- data gate --------------------------------------------------------------------------------------


def data_gate(
    before: pd.DataFrame, after: pd.DataFrame, removed_ids: list[str], removed_hashes: list[str], settings: GateSettings
) -> tuple[GateResult, dict]:
    """Validate the new manifest with a GX suite; returns the gate result and GX's full validation JSON."""
    import great_expectations as gx  # slow import (2-6 s): only when the gate runs
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("dataset").add_dataframe_asset("manifest")
    batch = asset.add_batch_definition_whole_dataframe("version").get_batch(batch_parameters={"dataframe": after})

    label_share = before["label"].value_counts(normalize=True).sort_index()
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
    total, weight = 0.0, 0
    for label in np.unique(member_labels):
        m = member_scores[member_labels == label]
        n = nonmember_scores[nonmember_labels == label]
        if len(n) == 0:
            continue
        # P(score_member > score_nonmember) + 0.5 P(tie), via ranks (Mann-Whitney U).
        combined = np.r_[m, n]
        ranks = rankdata(combined)
        u = ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2
        total += u / (len(m) * len(n)) * len(m)
        weight += len(m)
    return total / weight if weight else float("nan")


def _stratified_resample(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        idx.append(rng.choice(members, size=len(members), replace=True))
    return np.concatenate(idx)


def mia_gate(
    forget_phi: np.ndarray,
    forget_labels: np.ndarray,
    holdout_phi: np.ndarray,
    holdout_labels: np.ndarray,
    settings: GateSettings,
    seed: int = 0,
    name: str = "membership_inference",
) -> GateResult:
    """Population attack on logit-scaled confidence; pass only when the whole CI sits inside
    ``0.5 ± mia_margin``; fail when it lies wholly above (not forgotten) or below (over-forgotten)."""
    rng = np.random.default_rng(seed)
    auc = class_matched_auc(forget_phi, forget_labels, holdout_phi, holdout_labels)
    boot = []
    for _ in range(settings.bootstrap):
        fi = _stratified_resample(forget_labels, rng)
        hi = _stratified_resample(holdout_labels, rng)
        boot.append(class_matched_auc(forget_phi[fi], forget_labels[fi], holdout_phi[hi], holdout_labels[hi]))
    alpha = 1 - settings.confidence
    low, high = (float(v) for v in np.nanquantile(boot, [alpha / 2, 1 - alpha / 2]))
    # The same attack on two disjoint halves of the held-out data: what "indistinguishable" measures here.
    order = rng.permutation(len(holdout_phi))
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2 :]
    reference = class_matched_auc(
        holdout_phi[half_a], holdout_labels[half_a], holdout_phi[half_b], holdout_labels[half_b]
    )
    band = (0.5 - settings.mia_margin, 0.5 + settings.mia_margin)
    if low >= band[0] and high <= band[1]:
        status, summary = "pass", "forget set indistinguishable from held-out non-members"
    elif low > band[1]:
        status, summary = "fail", "forget set still looks like training members"
    elif high < band[0]:
        status, summary = "fail", "over-forgetting: forget set looks less member-like than unseen data"
    else:
        status, summary = "inconclusive", "confidence interval too wide to decide at this sample size"
    return GateResult(
        name=name,
        status=status,
        summary=summary,
        metrics={
            "auc": auc,
            "ci": [low, high],
            "reference_auc": reference,
            "n_forget": int(len(forget_phi)),
            "n_nonmembers": int(len(holdout_phi)),
        },
        thresholds={"band": list(band), "confidence": settings.confidence, "bootstrap": settings.bootstrap},
    )


def forget_accuracy_gate(forget_correct: np.ndarray, holdout_accuracy: float, settings: GateSettings) -> GateResult:
    """Forget accuracy should sit at the held-out level: pass when at most ``holdout + margin``; fail when
    a one-sided binomial test says it is significantly above (or below, over-forgetting)."""
    n, k = int(len(forget_correct)), int(np.sum(forget_correct))
    accuracy = k / n if n else float("nan")
    alpha = 1 - settings.confidence
    p_above = float(binomtest(k, n, min(holdout_accuracy, 1.0), alternative="greater").pvalue) if n else 1.0
    p_below = float(binomtest(k, n, min(holdout_accuracy, 1.0), alternative="less").pvalue) if n else 1.0
    upper = holdout_accuracy + settings.forget_accuracy_margin
    lower = holdout_accuracy - settings.forget_accuracy_margin
    if n == 0:
        status, summary = "inconclusive", "no forgotten sample was in the training split"
    elif accuracy > upper and p_above < alpha:
        status, summary = "fail", "forget accuracy significantly above held-out accuracy"
    elif accuracy < lower and p_below < alpha:
        status, summary = "fail", "over-forgetting: forget accuracy significantly below held-out accuracy"
    elif lower <= accuracy <= upper:
        status, summary = "pass", "forget accuracy at the held-out level"
    else:
        status, summary = "inconclusive", "forget accuracy off the held-out level, but not significantly"
    return GateResult(
        name="forget_accuracy",
        status=status,
        summary=summary,
        metrics={"forget_accuracy": accuracy, "holdout_accuracy": holdout_accuracy, "n": n,
                 "p_above": p_above, "p_below": p_below},
        thresholds={"margin": settings.forget_accuracy_margin, "alpha": alpha},
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
