"""The MLflow metric keys every version logs (unlearnops.run_metrics) and the gate contract's
``statistics`` attribute, on synthetic gate results (no flow run: the flow's runs are read back in
tests/test_flow.py)."""

import math

from unlearnops.gates import GateResult
from unlearnops.plugin_manager import contract_problems, load_plugins
from unlearnops.run_metrics import base_metrics, gate_keys, gate_metrics, unlearned_metrics


class _Gate:
    name, version, description = "toy", "1", "a toy gate"
    statistics = ("auc", "ci_low", "ci_high", "power", "missing")

    def check(self, evidence, settings):
        raise NotImplementedError


def test_gate_metrics_have_fixed_keys_whatever_the_result():
    declared = gate_keys([_Gate()])
    passed = GateResult(name="toy", status="pass", summary="", thresholds={},
                        metrics={"auc": 0.51, "ci": [0.45, 0.56], "power": True, "note": "text"})
    skipped = GateResult(name="toy", status="not_applicable", summary="", thresholds={}, metrics={"applicable": False})
    full, none, base = gate_metrics(declared, [passed]), gate_metrics(declared, [skipped]), gate_metrics(declared)
    assert set(full) == set(none) == set(base) == {"gate_toy_passed", *(f"gate_toy_{k}" for k in _Gate.statistics)}
    assert full["gate_toy_passed"] == 1.0 and full["gate_toy_ci_low"] == 0.45 and full["gate_toy_ci_high"] == 0.56
    assert full["gate_toy_power"] == 1.0 and math.isnan(full["gate_toy_missing"])
    assert all(math.isnan(v) for v in none.values()) and all(math.isnan(v) for v in base.values())
    failed = GateResult(name="toy", status="inconclusive", summary="", thresholds={}, metrics={})
    assert gate_metrics(declared, [failed])["gate_toy_passed"] == 0.0
    after = unlearned_metrics({"test_accuracy_after": 0.9, "test_accuracy_before": 0.95}, [passed], declared)
    before = base_metrics({"test_accuracy": 0.95, "train_accuracy": 1.0}, declared)
    assert set(after) == set(before)
    assert after["test_accuracy"] == 0.9 and after["parent_test_accuracy"] == 0.95 and before["test_accuracy"] == 0.95
    assert math.isnan(before["parent_test_accuracy"]) and math.isnan(after["train_accuracy"])


def test_gate_statistics_are_part_of_the_contract():
    assert contract_problems("gate", _Gate()) == []
    broken = _Gate()
    broken.statistics = "auc"
    assert contract_problems("gate", broken) == ["statistics must be a tuple of identifier strings, got 'auc'"]
    builtin = {e.name: e.obj for e in load_plugins().entries["gate"].values() if e.source == "built-in"}
    assert len(builtin) == 6 and all(gate_keys([g])[g.name] for g in builtin.values())
