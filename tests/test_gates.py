import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from unlearnops import gates
from unlearnops.workspace import GateSettings

SETTINGS = GateSettings(bootstrap=200)


def test_class_matched_auc_equals_roc_auc_within_one_class():
    rng = np.random.default_rng(0)
    m, n = rng.normal(1, 1, 50), rng.normal(0, 1, 80)
    expected = roc_auc_score(np.r_[np.ones(50), np.zeros(80)], np.r_[m, n])
    assert gates.class_matched_auc(m, np.zeros(50), n, np.zeros(80)) == pytest.approx(expected)


def test_class_matching_removes_class_mix_confound():
    # Class 1 is easier (higher scores) for everyone; members are mostly class 1. Unmatched AUC is high,
    # class-matched AUC is at chance because within a class members and non-members look the same.
    rng = np.random.default_rng(1)
    m_labels = np.r_[np.zeros(20), np.ones(180)]
    n_labels = np.r_[np.zeros(500), np.ones(500)]
    m = rng.normal(3 * m_labels, 1)
    n = rng.normal(3 * n_labels, 1)
    assert roc_auc_score(np.r_[np.ones(200), np.zeros(1000)], np.r_[m, n]) > 0.6
    assert abs(gates.class_matched_auc(m, m_labels, n, n_labels) - 0.5) < 0.06


def _mia(member_shift, n_members=400, parent_shift=1.0, seed=0):
    rng = np.random.default_rng(seed)
    labels_m, labels_n = rng.integers(0, 3, n_members), rng.integers(0, 3, 2000)
    holdout = rng.normal(0, 1, 2000)
    return gates.mia_gate(rng.normal(member_shift, 1, n_members), labels_m, holdout, labels_n, SETTINGS,
                          parent_forget_phi=rng.normal(parent_shift, 1, n_members), parent_holdout_phi=holdout)


def test_mia_gate_three_outcomes_and_both_sides():
    passed = _mia(0.0)
    assert passed.status == "pass" and passed.metrics["power"] is True
    still_member = _mia(1.0)
    assert still_member.status == "fail" and "member" in still_member.summary
    assert still_member.metrics["tpr_at_1pct_fpr"] > 0.05 > passed.metrics["tpr_at_1pct_fpr"]
    over = _mia(-1.0)
    assert over.status == "fail" and "over-forgetting" in over.summary
    assert _mia(0.0, n_members=8).status == "inconclusive"
    assert abs(passed.metrics["reference_auc"] - 0.5) < 0.1


def test_mia_gate_without_power_never_passes():
    """When the parent itself looked like a non-member, a no-op and real forgetting look the same."""
    no_power = _mia(0.0, parent_shift=0.0)
    assert no_power.status == "inconclusive" and no_power.metrics["power"] is False
    assert "no power" in no_power.summary


def _correct(n, accuracy):
    k = round(n * accuracy)
    return np.r_[np.ones(k), np.zeros(n - k)].astype(bool)


HOLDOUT = _correct(750, 0.964)


def test_forget_accuracy_gate_fails_a_no_op_and_passes_held_out_level():
    memorized = _correct(200, 1.0)
    no_op = gates.forget_accuracy_gate(memorized, HOLDOUT, memorized, HOLDOUT, SETTINGS)
    assert no_op.status == "fail" and no_op.metrics["p_above"] < 0.05
    at_level = gates.forget_accuracy_gate(_correct(200, 0.955), HOLDOUT, memorized, HOLDOUT, SETTINGS)
    assert at_level.status == "pass" and at_level.metrics["power"] is True
    over = gates.forget_accuracy_gate(_correct(200, 0.5), HOLDOUT, memorized, HOLDOUT, SETTINGS)
    assert over.status == "fail" and "over-forgetting" in over.summary


def test_a_parent_already_at_held_out_level_gives_no_power():
    at_level = _correct(200, 0.96)
    no_op = gates.forget_accuracy_gate(at_level, HOLDOUT, at_level, HOLDOUT, SETTINGS)
    assert no_op.status == "inconclusive" and no_op.metrics["power"] is False


def test_exact_methods_are_not_blocked_by_powerless_forgetting_gates():
    pending = [_result("membership_inference", "inconclusive", power=False),
               _result("forget_accuracy", "inconclusive", power=False), _result("utility", "pass")]
    assert gates.overall_status(pending, SETTINGS)[0] == "inconclusive"
    status, caveats = gates.overall_status(pending, SETTINGS, exact=True)
    assert status == "pass" and len(caveats) == 2 and all("by construction" in c for c in caveats)
    assert gates.overall_status([_result("utility", "inconclusive")], SETTINGS, exact=True)[0] == "inconclusive"
    assert gates.overall_status([_result("forget_accuracy", "fail")], SETTINGS, exact=True)[0] == "fail"


def test_forget_accuracy_gate_without_power_is_inconclusive():
    # 40 memorized samples at 100 % vs 96.4 % held-out is not significant: a no-op cannot be refuted, so
    # neither the no-op nor a real change may pass.
    memorized = _correct(40, 1.0)
    assert gates.forget_accuracy_gate(memorized, HOLDOUT, memorized, HOLDOUT, SETTINGS).status == "inconclusive"
    assert gates.forget_accuracy_gate(_correct(40, 0.95), HOLDOUT, memorized, HOLDOUT, SETTINGS).status == "inconclusive"


def test_utility_gate_bound():
    assert gates.utility_gate(0.97, 0.96, SETTINGS).status == "pass"
    assert gates.utility_gate(0.97, 0.94, SETTINGS).status == "fail"


def _result(name, status, **metrics):
    return gates.GateResult(name=name, status=status, summary=status, metrics=metrics, thresholds={})


def test_overall_status():
    assert gates.overall_status([_result("a", "pass"), _result("b", "pass")], SETTINGS) == ("pass", [])
    assert gates.overall_status([_result("a", "pass"), _result("b", "inconclusive")], SETTINGS)[0] == "inconclusive"
    assert gates.overall_status([_result("a", "inconclusive"), _result("b", "fail")], SETTINGS)[0] == "fail"


def test_powerless_mia_is_a_caveat_only_when_forget_accuracy_passed_with_power():
    mia = _result("membership_inference", "inconclusive", power=False)
    status, caveats = gates.overall_status([mia, _result("forget_accuracy", "pass", power=True)], SETTINGS)
    assert status == "pass" and caveats == ["membership_inference: inconclusive"]
    assert gates.overall_status([mia, _result("forget_accuracy", "inconclusive")], SETTINGS)[0] == "inconclusive"
    strict = SETTINGS.model_copy(update={"certify_without_mia_power": False})
    assert gates.overall_status([mia, _result("forget_accuracy", "pass")], strict)[0] == "inconclusive"
    wide = _result("membership_inference", "inconclusive", power=True)
    assert gates.overall_status([wide, _result("forget_accuracy", "pass")], SETTINGS)[0] == "inconclusive"


def _manifest(n=200):
    from unlearnops.datasets import build_manifest

    rng = np.random.default_rng(0)
    features = rng.random((n, 4), dtype=np.float32)
    ids = [f"s-{i:04d}" for i in range(n)]
    return build_manifest(ids, [f"p-{i // 5}" for i in range(n)], np.arange(n) % 3, features)


def test_data_gate_with_great_expectations():
    before = _manifest()
    removed = before.iloc[:10]
    after = before.iloc[10:].reset_index(drop=True)
    ids, hashes = removed.sample_id.tolist(), removed.content_sha256.tolist()
    ok, validation = gates.data_gate(before, after, ids, hashes, SETTINGS)
    assert ok.status == "pass" and validation["success"] is True

    leaked = pd.concat([after, removed.iloc[:1]], ignore_index=True)
    bad, _ = gates.data_gate(before, leaked, ids, hashes, SETTINGS)
    assert bad.status == "fail"
    assert "expect_column_values_to_not_be_in_set" in bad.metrics["failed"]
    assert "expect_table_row_count_to_equal" in bad.metrics["failed"]

    # Removing a whole class that the request names in full is class forgetting, not a broken version.
    whole_class = before[before.label == 0]
    rest = before[before.label != 0].reset_index(drop=True)
    forgot, _ = gates.data_gate(before, rest, whole_class.sample_id.tolist(), whole_class.content_sha256.tolist(),
                                SETTINGS)
    assert forgot.status == "pass" and forgot.metrics["classes_removed"] == [0]

    # A request that takes half of one class skews the label mix beyond the configured bound.
    half = before[before.label == 0].iloc[:34]
    skewed = before[~before.sample_id.isin(set(half.sample_id))].reset_index(drop=True)
    skew, _ = gates.data_gate(before, skewed, half.sample_id.tolist(), half.content_sha256.tolist(), SETTINGS)
    assert skew.status == "fail" and skew.metrics["failed"] == ["expect_column_kl_divergence_to_be_less_than"]


def test_atypical_forget_sets_are_inconclusive_not_over_forgotten():
    """Samples the parent never fit (e.g. labels no other sample supports) sit below unseen data before
    any unlearning: that is no evidence of over-forgetting, and no evidence of forgetting either."""
    atypical = _mia(-1.0, parent_shift=-1.0)
    assert atypical.status == "inconclusive" and "atypical" in atypical.summary
    never_fit = _correct(40, 0.05)
    result = gates.forget_accuracy_gate(never_fit, HOLDOUT, never_fit, HOLDOUT, SETTINGS)
    assert result.status == "inconclusive" and "atypical" in result.summary
    # Still over-forgetting when the unlearning itself pushed a fitted forget set down.
    pushed = gates.forget_accuracy_gate(_correct(200, 0.5), HOLDOUT, _correct(200, 1.0), HOLDOUT, SETTINGS)
    assert pushed.status == "fail" and "over-forgetting" in pushed.summary


def test_class_forgetting_gate_judges_removed_classes_against_chance():
    knew_it = _correct(120, 0.98)
    assert gates.class_forgetting_gate(_correct(120, 0.0), knew_it, 3, SETTINGS).status == "pass"
    still = gates.class_forgetting_gate(_correct(120, 0.9), knew_it, 3, SETTINGS)
    assert still.status == "fail" and "recognizes" in still.summary
    never_knew = gates.class_forgetting_gate(_correct(120, 0.0), _correct(120, 0.0), 3, SETTINGS)
    assert never_knew.status == "inconclusive" and never_knew.metrics["power"] is False


def test_exact_methods_are_excused_over_forgetting_but_never_remaining_members():
    over = _result("forget_accuracy", "fail")
    over.summary = gates.OVER_FORGETTING + ": forget accuracy significantly below held-out accuracy"
    data, utility = _result("data", "pass"), _result("utility", "pass")
    status, caveats = gates.overall_status([data, over, utility], SETTINGS, exact=True)
    assert status == "pass" and "retraining defines the target" in caveats[0]
    assert gates.overall_status([data, over, utility], SETTINGS, exact=False)[0] == "fail"
    member = _result("forget_accuracy", "fail")
    member.summary = "forget accuracy significantly above held-out accuracy"
    assert gates.overall_status([data, member, utility], SETTINGS, exact=True)[0] == "fail"
    # A gate with nothing to judge is left out of the verdict, never counted as a pass.
    skipped = gates.not_applicable("class_forgetting", "no class was removed in full")
    assert gates.overall_status([data, skipped, utility], SETTINGS)[0] == "pass"
    assert gates.overall_status([skipped], SETTINGS)[0] == "inconclusive"
