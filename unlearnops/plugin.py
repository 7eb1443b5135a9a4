"""Everything a plugin author imports, in one place: ``from unlearnops.plugin import ...``.

A plugin — an unlearning method, a gate, a locator, an exporter or a dataset adapter — needs the hook marker
(:data:`hookimpl`), the types its hook's contract names (see :mod:`unlearnops.hookspecs`), a few helpers, and
the conformance kit for its tests. They are defined where core uses them (the method contract in
:mod:`unlearnops.method_runner`, the plugin manager in :mod:`unlearnops.plugin_manager`, gates in
:mod:`unlearnops.gates`, locating in :mod:`unlearnops.locate`, ...) and gathered here, so that a plugin, the
package ``unlearnops plugins new`` writes and every built-in plugin in ``plugins/`` import from this module
only. Core modules import from the defining modules, never from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from unlearnops import __version__
from unlearnops.hookspecs import hookimpl

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name is imported on first use
    from unlearnops._lazy import lazy_module, no_grad
    from unlearnops.progress import epoch_progress
    from unlearnops.datasets import MANIFEST_COLUMNS, SourceData, SourceError, mnist_5k, mnist_5k_planted, sklearn_digits
    from unlearnops.export import export_onnx
    from unlearnops.gates import (
        GateEvidence,
        GateResult,
        Status,
        class_forgetting_gate,
        classes_removed_in_full,
        data_gate,
        forget_accuracy_gate,
        mia_gate,
        not_applicable,
        retrain_equivalence_gate,
        too_few,
        utility_gate,
    )
    from unlearnops.locate import (
        EXACT_LOCATORS,
        MATCH_COLUMNS,
        ExactLocator,
        LocateContext,
        match_keys,
        matches_frame,
    )
    from unlearnops.method_runner import (
        DEFAULT_TRAINING,
        Method,
        MethodConfig,
        RetrainingConfig,
        Samples,
        UnlearnInputs,
        UnlearnResult,
        accepts_sample_ids,
        call_training,
        changed_parameters,
        fresh_model,
        parameter_snapshot,
        parse_config,
        reinitialized,
        run_method,
        training_params,
    )
    from unlearnops.model import Evaluation, inference_batch_size, multiply_adds, penultimate_features
    from unlearnops.neardup import HASH_SIZE, as_images, cosine_search, hamming_search, normalize, phash
    from unlearnops.plugin_manager import PluginError, PluginSet, load_plugins
    from unlearnops.requests import DeletionRequest
    from unlearnops.testing import ConformanceTask, assert_conformant, check_method, conformance_mlp, tiny_task
    from unlearnops.workspace import GateSettings, import_object

#: public name -> the module that defines it. Resolved on first access (PEP 562), so that importing this
#: module, and loading and listing plugins, imports neither torch nor pandas nor scipy: only what a name
#: needs, when it is used (``from unlearnops.plugin import UnlearnResult`` imports the method contract only).
_DEFINED_IN = {
    "lazy_module": "unlearnops._lazy",
    "no_grad": "unlearnops._lazy",
    "epoch_progress": "unlearnops.progress",
    "MANIFEST_COLUMNS": "unlearnops.datasets",
    "SourceData": "unlearnops.datasets",
    "SourceError": "unlearnops.datasets",
    "mnist_5k": "unlearnops.datasets",
    "mnist_5k_planted": "unlearnops.datasets",
    "sklearn_digits": "unlearnops.datasets",
    "export_onnx": "unlearnops.export",
    "GateEvidence": "unlearnops.gates",
    "GateResult": "unlearnops.gates",
    "Status": "unlearnops.gates",
    "class_forgetting_gate": "unlearnops.gates",
    "classes_removed_in_full": "unlearnops.gates",
    "data_gate": "unlearnops.gates",
    "forget_accuracy_gate": "unlearnops.gates",
    "mia_gate": "unlearnops.gates",
    "not_applicable": "unlearnops.gates",
    "retrain_equivalence_gate": "unlearnops.gates",
    "too_few": "unlearnops.gates",
    "utility_gate": "unlearnops.gates",
    "EXACT_LOCATORS": "unlearnops.locate",
    "MATCH_COLUMNS": "unlearnops.locate",
    "ExactLocator": "unlearnops.locate",
    "LocateContext": "unlearnops.locate",
    "match_keys": "unlearnops.locate",
    "matches_frame": "unlearnops.locate",
    "DEFAULT_TRAINING": "unlearnops.method_runner",
    "Method": "unlearnops.method_runner",
    "MethodConfig": "unlearnops.method_runner",
    "RetrainingConfig": "unlearnops.method_runner",
    "Samples": "unlearnops.method_runner",
    "UnlearnInputs": "unlearnops.method_runner",
    "UnlearnResult": "unlearnops.method_runner",
    "accepts_sample_ids": "unlearnops.method_runner",
    "call_training": "unlearnops.method_runner",
    "changed_parameters": "unlearnops.method_runner",
    "fresh_model": "unlearnops.method_runner",
    "parameter_snapshot": "unlearnops.method_runner",
    "parse_config": "unlearnops.method_runner",
    "reinitialized": "unlearnops.method_runner",
    "run_method": "unlearnops.method_runner",
    "training_params": "unlearnops.method_runner",
    "Evaluation": "unlearnops.model",
    "penultimate_features": "unlearnops.model",
    "multiply_adds": "unlearnops.model",
    "inference_batch_size": "unlearnops.model",
    "HASH_SIZE": "unlearnops.neardup",
    "as_images": "unlearnops.neardup",
    "cosine_search": "unlearnops.neardup",
    "hamming_search": "unlearnops.neardup",
    "normalize": "unlearnops.neardup",
    "phash": "unlearnops.neardup",
    "PluginError": "unlearnops.plugin_manager",
    "PluginSet": "unlearnops.plugin_manager",
    "load_plugins": "unlearnops.plugin_manager",
    "DeletionRequest": "unlearnops.requests",
    "ConformanceTask": "unlearnops.testing",
    "assert_conformant": "unlearnops.testing",
    "check_method": "unlearnops.testing",
    "conformance_mlp": "unlearnops.testing",
    "tiny_task": "unlearnops.testing",
    "GateSettings": "unlearnops.workspace",
    "import_object": "unlearnops.workspace",
}


def __getattr__(name: str) -> Any:
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    # every plugin
    "__version__",
    "hookimpl",
    "PluginError",
    "lazy_module",
    "no_grad",
    # methods (register_methods)
    "Method",
    "MethodConfig",
    "RetrainingConfig",
    "DEFAULT_TRAINING",
    "Samples",
    "UnlearnInputs",
    "UnlearnResult",
    "parameter_snapshot",
    "changed_parameters",
    "call_training",
    "accepts_sample_ids",
    "training_params",
    "epoch_progress",
    "reinitialized",
    "fresh_model",
    "penultimate_features",
    "multiply_adds",
    "inference_batch_size",
    # methods built on other methods
    "PluginSet",
    "load_plugins",
    "parse_config",
    "run_method",
    # gates (register_gates)
    "GateEvidence",
    "GateResult",
    "GateSettings",
    "Status",
    "Evaluation",
    "not_applicable",
    "retrain_equivalence_gate",
    "too_few",
    "classes_removed_in_full",
    "data_gate",
    "mia_gate",
    "forget_accuracy_gate",
    "class_forgetting_gate",
    "utility_gate",
    # locators (register_locators)
    "DeletionRequest",
    "LocateContext",
    "ExactLocator",
    "EXACT_LOCATORS",
    "MATCH_COLUMNS",
    "MANIFEST_COLUMNS",
    "match_keys",
    "matches_frame",
    "HASH_SIZE",
    "as_images",
    "phash",
    "hamming_search",
    "normalize",
    "cosine_search",
    # exporters (register_exporters)
    "export_onnx",
    # dataset adapters (register_dataset_adapters)
    "SourceData",
    "SourceError",
    "import_object",
    "mnist_5k",
    "mnist_5k_planted",
    "sklearn_digits",
    # the conformance kit, for a plugin's tests
    "assert_conformant",
    "check_method",
    "ConformanceTask",
    "tiny_task",
    "conformance_mlp",
]
