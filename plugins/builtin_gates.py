"""The built-in gates, registered through ``register_gates`` like any plugin's; each points at the function
in :mod:`unlearnops.gates` that implements it."""

from __future__ import annotations

from unlearnops import __version__, gates, hookimpl
from unlearnops.gates import GateResult
from unlearnops.methods import GateEvidence
from unlearnops.workspace import GateSettings


class DataGate:
    name = "data"
    version = __version__
    description = "Great Expectations suite on the new dataset version (deleted ids gone, schema, labels)."

    def check(self, evidence: GateEvidence, settings: GateSettings) -> GateResult:
        result, validation = gates.data_gate(evidence.manifest_before, evidence.manifest_after,
                                             evidence.forget_ids, evidence.forget_hashes, settings)
        evidence.artifacts["gx_validation.json"] = validation
        return result


class MembershipInferenceGate:
    name = "membership_inference"
    version = __version__
    description = ("Class-matched AUC of forget set vs held-out non-members: bootstrap CI inside 0.5 ± margin, "
                   "with power shown on the parent.")

    def check(self, evidence: GateEvidence, settings: GateSettings) -> GateResult:
        if len(evidence.forget_labels) == 0:
            return GateResult(name=self.name, status="inconclusive", summary="no forgotten training sample",
                              metrics={"n_forget": 0}, thresholds={})
        return gates.mia_gate(
            evidence.after["forget"].phi, evidence.forget_labels, evidence.after["holdout"].phi,
            evidence.holdout_labels, settings, parent_forget_phi=evidence.before["forget"].phi,
            parent_holdout_phi=evidence.before["holdout"].phi, seed=evidence.seed,
        )


class ForgetAccuracyGate:
    name = "forget_accuracy"
    version = __version__
    description = "Forget accuracy at the held-out level (Fisher's exact test), with power shown on the parent."

    def check(self, evidence: GateEvidence, settings: GateSettings) -> GateResult:
        return gates.forget_accuracy_gate(
            evidence.after["forget"].correct, evidence.after["holdout"].correct,
            evidence.before["forget"].correct, evidence.before["holdout"].correct, settings,
        )


class UtilityGate:
    name = "utility"
    version = __version__
    description = "Test-accuracy drop from the parent model within the allowed bound."

    def check(self, evidence: GateEvidence, settings: GateSettings) -> GateResult:
        return gates.utility_gate(evidence.before["test"].accuracy, evidence.after["test"].accuracy, settings)


@hookimpl
def register_gates(register):
    for gate in (DataGate(), MembershipInferenceGate(), ForgetAccuracyGate(), UtilityGate()):
        register(gate)
