# TEMPORARY shim until the plugin-module branch lands
from unlearnops.methods import *  # noqa
from unlearnops.methods import GateEvidence, PluginError, Samples, UnlearnInputs  # noqa
from unlearnops.gates import GateResult  # noqa
