"""The built-in gates, registered through ``register_gates`` like any plugin's; each points at the function
in :mod:`unlearnops.gates` that implements it."""

from __future__ import annotations

import numpy as np

from unlearnops.plugin import (
    __version__,
    GateEvidence,
    GateResult,
    GateSettings,
    class_forgetting_gate,
    classes_removed_in_full,
    data_gate,
    forget_accuracy_gate,
    hookimpl,
    mia_gate,
    not_applicable,
    retrain_equivalence_gate,
    utility_gate,
)


class DataGate:
    name = "data"
    version = __version__
    #: Logged as MLflow metrics gate_<name>_<statistic> on every version (unlearnops.run_metrics).
    statistics = ("rows_before", "rows_after", "removed", "expectations")
    description = "Great Expectations suite on the new dataset version (deleted ids gone, schema, labels)."

    def check(self, evidence: GateEvidence, settings: GateSettings) -> GateResult:
        result, validation = data_gate(evidence.manifest_before, evidence.manifest_after,
                                             evidence.forget_ids, evidence.forget_hashes, settings)
        evidence.artifacts["gx_validation.json"] = validation
        return result


def _sample_level(evidence: GateEvidence) -> np.ndarray:
    """Mask of the forgotten samples whose class stays in the dataset: the ones held-out data can judge."""
    removed = classes_removed_in_full(evidence.forget_labels, evidence.manifest_after)
    return ~np.isin(evidence.forget_labels, sorted(removed))


class MembershipInferenceGate:
    name = "membership_inference"
    version = __version__
    #: Logged as MLflow metrics gate_<name>_<statistic> on every version (unlearnops.run_metrics).
    statistics = ("auc", "ci_low", "ci_high", "parent_auc", "tpr_at_1pct_fpr", "reference_auc", "power",
                  "n_forget", "n_nonmembers")
    description = ("Class-matched AUC of forget set vs held-out non-members: bootstrap CI inside 0.5 ± margin, "
                   "with power shown on the parent.")

    def check(self, evidence: GateEvidence, settings: GateSettings) -> GateResult:
        if len(evidence.forget_labels) == 0:
            return GateResult(name=self.name, status="inconclusive", summary="no forgotten training sample",
                              metrics={"n_forget": 0}, thresholds={})
        keep = _sample_level(evidence)
        if not keep.any():
            return not_applicable(self.name, "every forgotten sample's class was removed in full")
        return mia_gate(
            evidence.after["forget"].phi[keep], evidence.forget_labels[keep], evidence.after["holdout"].phi,
            evidence.holdout_labels, settings, parent_forget_phi=evidence.before["forget"].phi[keep],
            parent_holdout_phi=evidence.before["holdout"].phi, seed=evidence.seed,
        )


class ForgetAccuracyGate:
    name = "forget_accuracy"
    version = __version__
    #: Logged as MLflow metrics gate_<name>_<statistic> on every version (unlearnops.run_metrics).
    statistics = ("forget_accuracy", "holdout_accuracy", "parent_forget_accuracy", "p_above", "p_below",
                  "power", "n")
    description = "Forget accuracy at the held-out level (Fisher's exact test), with power shown on the parent."

    def check(self, evidence: GateEvidence, settings: GateSettings) -> GateResult:
        keep = _sample_level(evidence)
        if len(keep) and not keep.any():
            return not_applicable(self.name, "every forgotten sample's class was removed in full")
        return forget_accuracy_gate(
            evidence.after["forget"].correct[keep], evidence.after["holdout"].correct,
            evidence.before["forget"].correct[keep], evidence.before["holdout"].correct, settings,
        )


class ClassForgettingGate:
    name = "class_forgetting"
    version = __version__
    #: Logged as MLflow metrics gate_<name>_<statistic> on every version (unlearnops.run_metrics).
    statistics = ("forget_accuracy", "parent_forget_accuracy", "chance", "p_above", "power", "n")
    description = ("For classes removed in full: accuracy on their forgotten samples at chance (binomial test), "
                   "with power shown on the parent.")

    def check(self, evidence: GateEvidence, settings: GateSettings) -> GateResult:
        removed = ~_sample_level(evidence)
        if not removed.any():
            return not_applicable(self.name, "no class was removed in full")
        n_classes = int(evidence.manifest_before["label"].nunique())
        return class_forgetting_gate(evidence.after["forget"].correct[removed],
                                           evidence.before["forget"].correct[removed], n_classes, settings)


class RetrainEquivalenceGate:
    name = "retrain_equivalence"
    version = __version__
    #: Logged as MLflow metrics gate_<name>_<statistic> on every version (unlearnops.run_metrics).
    statistics = ("score", "ci_low", "ci_high", "parent_score", "agreement", "parent_agreement",
                  "reference_agreement", "references", "power", "n")
    description = ("Per forgotten sample, the candidate against reference models that never trained on it: label "
                   "agreement and offline-LiRA score, with power shown on the parent (needed to certify an "
                   "approximate method).")

    def check(self, evidence: GateEvidence, settings: GateSettings) -> GateResult:
        if evidence.exact:
            return not_applicable(self.name, "exact method: retrained without the data")
        keep = _sample_level(evidence)
        if len(keep) and not keep.any():
            return not_applicable(self.name, "every forgotten sample's class was removed in full")
        if not evidence.references:
            why = evidence.references_note.get("why", "no valid reference model")
            return GateResult(name=self.name, status="inconclusive", summary=f"no reference models: {why}",
                              metrics={"n": int(keep.sum()), "references": 0, "power": False},
                              thresholds={})
        from unlearnops.plugin import Evaluation

        refs = [Evaluation(r.correct[keep], r.loss[keep], r.phi[keep], r.predicted[keep])
                for r in evidence.references]
        after, before = evidence.after["forget"], evidence.before["forget"]
        result = retrain_equivalence_gate(
            Evaluation(after.correct[keep], after.loss[keep], after.phi[keep], after.predicted[keep]),
            Evaluation(before.correct[keep], before.loss[keep], before.phi[keep], before.predicted[keep]),
            refs, settings, seed=evidence.seed,
            out_mask=None if evidence.reference_out is None else np.asarray(evidence.reference_out)[:, keep])
        result.metrics["reference_models"] = evidence.references_note
        return result


class UtilityGate:
    name = "utility"
    version = __version__
    #: Logged as MLflow metrics gate_<name>_<statistic> on every version (unlearnops.run_metrics).
    statistics = ("test_accuracy_before", "test_accuracy_after", "drop")
    description = "Test-accuracy drop from the parent model within the allowed bound."

    def check(self, evidence: GateEvidence, settings: GateSettings) -> GateResult:
        return utility_gate(evidence.before["test"].accuracy, evidence.after["test"].accuracy, settings)


@hookimpl
def register_gates(register):
    for gate in (DataGate(), MembershipInferenceGate(), ForgetAccuracyGate(), ClassForgettingGate(),
                 RetrainEquivalenceGate(), UtilityGate()):
        register(gate)
