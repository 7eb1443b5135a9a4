import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import tiny_manifest
from unlearnops import gates
from unlearnops.workspace import GateSettings

SETTINGS = GateSettings(bootstrap=200)


def test_class_matched_auc_equals_roc_auc_within_one_class():
    rng = np.random.default_rng(0)
    m, n = rng.normal(1, 1, 50), rng.normal(0, 1, 80)
    expected = roc_auc_score(np.r_[np.ones(50), np.zeros(80)], np.r_[m, n])
    assert gates.class_matched_auc(m, np.zeros(50), n, np.zeros(80)) == pytest.approx(expected)


def test_class_matched_auc_is_the_member_weighted_mean_of_per_class_roc_auc_with_ties_and_a_nan():
    rng = np.random.default_rng(4)
    m_labels, n_labels = rng.integers(0, 4, 90), rng.integers(0, 5, 300)  # class 4 has no members
    m, n = np.round(rng.normal(0.5, 1, 90), 1), np.round(rng.normal(0, 1, 300), 1)  # many tied scores
    per_class = [(roc_auc_score(np.r_[np.ones((m_labels == c).sum()), np.zeros((n_labels == c).sum())],
                                np.r_[m[m_labels == c], n[n_labels == c]]), (m_labels == c).sum()) for c in range(4)]
    expected = sum(auc * count for auc, count in per_class) / sum(count for _, count in per_class)
    assert gates.class_matched_auc(m, m_labels, n, n_labels) == pytest.approx(expected, abs=1e-12)
    m[3] = np.nan
    assert np.isnan(gates.class_matched_auc(m, m_labels, n, n_labels))


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
    assert gates.overall_status([_result("utility", "fail")], SETTINGS, exact=True)[0] == "fail"


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


PROXY = SETTINGS.model_copy(update={"heldout_proxy": True})


def test_overall_status():
    evidence = _result("retrain_equivalence", "pass")
    assert gates.overall_status([_result("a", "pass"), _result("b", "pass"), evidence], SETTINGS) == ("pass", [])
    assert gates.overall_status([_result("a", "pass"), _result("b", "pass")], SETTINGS)[0] == "inconclusive"
    assert gates.overall_status([_result("a", "pass"), _result("b", "inconclusive")], SETTINGS)[0] == "inconclusive"
    assert gates.overall_status([_result("a", "inconclusive"), _result("b", "fail")], SETTINGS)[0] == "fail"


def test_powerless_mia_is_a_caveat_only_when_forget_accuracy_passed_with_power():
    """(Held-out proxy only, an opt-in: with retrain-equivalence evidence the proxies are caveats anyway.)"""
    mia = _result("membership_inference", "inconclusive", power=False)
    status, caveats = gates.overall_status([mia, _result("forget_accuracy", "pass", power=True)], PROXY)
    assert status == "pass" and caveats[-1] == "membership_inference: inconclusive"
    assert gates.overall_status([mia, _result("forget_accuracy", "pass", power=True)], SETTINGS)[0] == "inconclusive"
    assert gates.overall_status([mia, _result("forget_accuracy", "inconclusive")], PROXY)[0] == "inconclusive"
    strict = PROXY.model_copy(update={"certify_without_mia_power": False})
    assert gates.overall_status([mia, _result("forget_accuracy", "pass")], strict)[0] == "inconclusive"
    wide = _result("membership_inference", "inconclusive", power=True)
    assert gates.overall_status([wide, _result("forget_accuracy", "pass")], PROXY)[0] == "inconclusive"


def test_data_gate_with_great_expectations():
    before = tiny_manifest()
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



def test_data_gate_validates_the_same_inputs_once_and_hands_out_copies(monkeypatch):
    before = tiny_manifest(120)
    removed = before.iloc[:6]
    after = before.iloc[6:].reset_index(drop=True)
    ids, hashes = removed.sample_id.tolist(), removed.content_sha256.tolist()
    runs = []
    validate = gates._validated_manifest
    monkeypatch.setattr(gates, "_validated_manifest", lambda *a: runs.append(1) or validate(*a))
    first, validation = gates.data_gate(before, after, ids, hashes, SETTINGS)
    first.metrics["failed"].append("tampered by a caller")
    validation["success"] = False
    again, validation_again = gates.data_gate(before, after.copy(), list(ids), list(hashes), SETTINGS)
    assert runs == [1] and again.status == "pass" and again.metrics["failed"] == []
    assert validation_again["success"] is True
    changed = after.copy()
    changed.loc[0, "label"] = (changed.loc[0, "label"] + 1) % 3  # same shape, other content: validated anew
    gates.data_gate(before, changed, ids, hashes, SETTINGS)
    gates.data_gate(before, after, ids, hashes, SETTINGS.model_copy(update={"label_kl_max": 0.5}))
    assert runs == [1, 1, 1]


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


def test_exact_methods_are_excused_forgetting_failures_as_caveats_but_not_data_or_utility():
    over = _result("forget_accuracy", "fail")
    over.summary = gates.OVER_FORGETTING + ": forget accuracy significantly below held-out accuracy"
    data, utility = _result("data", "pass"), _result("utility", "pass")
    status, caveats = gates.overall_status([data, over, utility], SETTINGS, exact=True)
    assert status == "pass" and "retraining defines the target" in caveats[0]
    assert gates.overall_status([data, over, utility], SETTINGS, exact=False)[0] == "fail"
    member = _result("forget_accuracy", "fail")
    member.summary = "forget accuracy significantly above held-out accuracy"
    status, caveats = gates.overall_status([data, member, utility], SETTINGS, exact=True)
    assert status == "pass" and "never trained on these samples" in caveats[0]
    assert gates.overall_status([data, member, utility], SETTINGS, exact=False)[0] == "fail"
    broken = _result("utility", "fail")
    assert gates.overall_status([data, member, broken], SETTINGS, exact=True)[0] == "fail"
    assert gates.overall_status([_result("data", "fail"), over, utility], SETTINGS, exact=True)[0] == "fail"
    # A gate with nothing to judge is left out of the verdict, never counted as a pass.
    skipped = gates.not_applicable("class_forgetting", "no class was removed in full")
    assert gates.overall_status([data, skipped, utility], SETTINGS, exact=True)[0] == "pass"
    assert gates.overall_status([data, skipped, utility], PROXY)[0] == "pass"
    assert gates.overall_status([skipped], SETTINGS)[0] == "inconclusive"


# -- retrain equivalence, degenerate sizes, what certification requires -----------------------------------


def _ev(phi, predicted, labels):
    from unlearnops.model import Evaluation

    return Evaluation(predicted == labels, -np.log(1 / (1 + np.exp(-phi))), phi, predicted)


def _equivalence_case(candidate_shift, parent_shift=3.0, n=60, k=4, seed=0):
    """Per-sample out-mean mu(x); K references, the parent and the candidate drawn around it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    mu = rng.normal(0, 2, n)

    def model(shift):
        phi = mu + shift + rng.normal(0, 1, n)
        return _ev(phi, np.where(phi > 0, labels, (labels + 1) % 3), labels)

    refs = [model(0.0) for _ in range(k)]
    return model(candidate_shift), model(parent_shift), refs


def test_retrain_equivalence_refuses_a_no_op_and_passes_a_retrained_like_model():
    candidate, parent, refs = _equivalence_case(candidate_shift=3.0)
    noop = gates.retrain_equivalence_gate(candidate, parent, refs, SETTINGS)
    assert noop.status == "fail" and "like the parent" in noop.summary and noop.metrics["power"] is True
    candidate, parent, refs = _equivalence_case(candidate_shift=0.0)
    good = gates.retrain_equivalence_gate(candidate, parent, refs, SETTINGS)
    assert good.status == "pass", good.summary
    assert good.metrics["agreement"] > good.metrics["parent_agreement"]
    assert "agrees with models that never saw them" in good.summary
    candidate, parent, refs = _equivalence_case(candidate_shift=-3.0)
    assert gates.retrain_equivalence_gate(candidate, parent, refs, SETTINGS).summary.startswith("over-forgetting")


def test_retrain_equivalence_without_power_is_inconclusive():
    candidate, parent, refs = _equivalence_case(candidate_shift=0.0, parent_shift=0.0)
    result = gates.retrain_equivalence_gate(candidate, parent, refs, SETTINGS)
    assert result.status == "inconclusive" and result.metrics["power"] is False
    candidate, parent, refs = _equivalence_case(candidate_shift=0.0, k=1)
    assert gates.retrain_equivalence_gate(candidate, parent, refs, SETTINGS).status == "inconclusive"


def test_one_sample_batch_is_inconclusive_on_every_forgetting_gate():
    """The membership gate used to fail a single sample as over-forgetting from a degenerate bootstrap."""
    from unlearnops.gates import FORGETTING_GATES, GateEvidence
    from unlearnops.plugin_manager import load_plugins

    rng = np.random.default_rng(0)
    holdout_labels = rng.integers(0, 3, 300)
    holdout = _ev(rng.normal(0, 1, 300), holdout_labels, holdout_labels)
    manifest = pd.DataFrame({"label": np.r_[holdout_labels, [0]]})
    forget_labels = np.array([0])
    before = {"forget": _ev(np.array([6.0]), forget_labels, forget_labels), "holdout": holdout, "test": holdout}
    after = {"forget": _ev(np.array([-6.0]), np.array([1]), forget_labels), "holdout": holdout, "test": holdout}
    for removed_class in (False, True):
        after_manifest = manifest[manifest["label"] != 0] if removed_class else manifest
        refs = _equivalence_case(0.0, n=1)[2]
        evidence = GateEvidence(manifest, after_manifest, ["s"], ["h"], forget_labels, holdout_labels, before,
                                after, references=refs)
        judged = 0
        for name, entry in load_plugins().entries["gate"].items():
            if name not in FORGETTING_GATES:
                continue
            result = entry.obj.check(evidence, SETTINGS)
            if result.status == "not_applicable":
                continue
            judged += 1
            assert result.status == "inconclusive" and result.metrics["power"] is False, (name, result)
            assert "no power" in result.summary
        assert judged >= 1


def _verdict(name, status, power=True):
    return gates.GateResult(name=name, status=status, summary=status, metrics={"power": power}, thresholds={})


def test_approximate_methods_need_retrain_equivalence_evidence():
    proxies = [_verdict("data", "pass"), _verdict("utility", "pass"), _verdict("forget_accuracy", "pass"),
               _verdict("membership_inference", "pass")]
    missing = proxies + [_verdict("retrain_equivalence", "inconclusive", power=False)]
    assert gates.overall_status(missing, SETTINGS) == ("inconclusive", [])
    status, caveats = gates.overall_status(missing, SETTINGS.model_copy(update={"heldout_proxy": True}))
    assert status == "pass" and any("held-out proxy" in c and "never saw" in c for c in caveats)
    assert gates.certification_grounds(missing, "pass", exact=False).startswith("certified — on the held-out proxy")
    assert gates.overall_status(missing, SETTINGS, exact=True)[0] == "pass"
    assert gates.certification_grounds(missing, "pass", exact=True) == "certified — retrained without the data (exact)"
    evidence = proxies + [_verdict("retrain_equivalence", "pass")]
    assert gates.overall_status(evidence, SETTINGS) == ("pass", [])
    assert "behaves like models that never saw the data" in gates.certification_grounds(evidence, "pass", False)
    refused = proxies + [_verdict("retrain_equivalence", "fail")]
    assert gates.overall_status(refused, SETTINGS)[0] == "fail"


def test_report_roc_points_are_scikit_learns_with_ties_and_infinities():
    from sklearn.metrics import roc_curve

    from unlearnops.report import roc_points

    rng = np.random.default_rng(7)
    for m, n in [(rng.normal(1, 1, 40), rng.normal(0, 1, 70)),
                 (np.round(rng.normal(0.5, 1, 60), 1), np.round(rng.normal(0, 1, 90), 1)),  # many ties
                 (np.r_[np.inf, 3.0, -np.inf, 0.0], np.r_[-np.inf, 0.0, 0.0, 1.0, np.inf])]:
        fpr, tpr = roc_points(m, n)
        finite = np.clip(np.r_[m, n], -1e300, 1e300)  # the same order; scikit-learn refuses infinities
        want_fpr, want_tpr, _ = roc_curve(np.r_[np.ones(len(m)), np.zeros(len(n))], finite, drop_intermediate=False)
        np.testing.assert_allclose(fpr, want_fpr, rtol=0, atol=1e-15)
        np.testing.assert_allclose(tpr, want_tpr, rtol=0, atol=1e-15)
