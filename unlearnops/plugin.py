"""Everything a plugin author imports, in one place: ``from unlearnops.plugin import ...``.

A plugin — an unlearning method, a gate, a locator, an exporter or a dataset adapter — needs the hook marker
(:data:`hookimpl`), the types its hook's contract names (see :mod:`unlearnops.hookspecs`), a few helpers, and
the conformance kit for its tests. They are defined where core uses them (the method contract in
:mod:`unlearnops.method_runner`, the plugin manager in :mod:`unlearnops.plugin_manager`, gates in
:mod:`unlearnops.gates`, locating in :mod:`unlearnops.locate`, ...) and gathered here, so that a plugin, the
package ``unlearnops plugins new`` writes and every built-in plugin in ``plugins/`` import from this module
only. Core modules import from the defining modules, never from here.
"""

from unlearnops import __version__
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
from unlearnops.hookspecs import hookimpl
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
from unlearnops.model import Evaluation, penultimate_features
from unlearnops.neardup import HASH_SIZE, as_images, cosine_search, hamming_search, normalize, phash
from unlearnops.plugin_manager import PluginError, PluginSet, load_plugins
from unlearnops.requests import DeletionRequest
from unlearnops.testing import ConformanceTask, assert_conformant, check_method, conformance_mlp, tiny_task
from unlearnops.workspace import GateSettings, import_object

__all__ = [
    # every plugin
    "__version__",
    "hookimpl",
    "PluginError",
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
    "reinitialized",
    "fresh_model",
    "penultimate_features",
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
