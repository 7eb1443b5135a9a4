"""Every built-in method, retrain included, gives bit-identical weights on CPU for one seed — whatever the
global random state was before (the model factory is seeded before it draws initial weights)."""

import dataclasses

import pytest
import torch

from unlearnops.method_runner import parse_config, run_method
from unlearnops.plugin_manager import load_plugins
from unlearnops.testing import conformance_mlp, tiny_task

BUILT_IN = sorted(name for name, entry in load_plugins().entries["method"].items() if entry.source == "built-in")


def _weights(method, task, inputs, seed):
    result = run_method(method, task.model, inputs, parse_config(method, {"seed": seed}), torch.device("cpu"))
    return result.model.state_dict()


@pytest.mark.parametrize("name", BUILT_IN)
def test_builtin_method_is_deterministic_for_one_seed(name):
    method = load_plugins().get(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task = method.conformance_task(0) if hasattr(method, "conformance_task") else tiny_task()
        inputs = task.inputs
        if inputs.model_factory is None:  # the flow passes the workspace's factory: exact methods call it
            inputs = dataclasses.replace(inputs, model_factory=lambda: conformance_mlp(16, 4))
        torch.manual_seed(1)
        first = _weights(method, task, inputs, seed=0)
        torch.manual_seed(2)  # a different global state in between must not matter
        torch.rand(7)
        second = _weights(method, task, inputs, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert first.keys() == second.keys()
    diffs = {k: float((first[k].float() - second[k].float()).abs().max()) for k in first}
    assert all(torch.equal(first[k], second[k]) for k in first), f"{name}: max |Δ| per tensor {diffs}"


def test_retrain_seeds_the_factory_itself():
    """Called directly (not through run_method's seeding), retrain still builds its model under the seed."""
    method = load_plugins().get("retrain")
    task = tiny_task()
    inputs = dataclasses.replace(task.inputs, model_factory=lambda: conformance_mlp(16, 4))
    config = parse_config(method, {"seed": 3, "epochs": 2})
    torch.manual_seed(10)
    a = method.unlearn(task.model, inputs, config, torch.device("cpu")).model.state_dict()
    torch.manual_seed(11)
    b = method.unlearn(task.model, inputs, config, torch.device("cpu")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
