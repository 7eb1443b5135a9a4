"""Paper presets of the classic methods: ``preset = "paper"`` starts from the reference implementation's
defaults (every field named in ``PAPER`` exists and is applied, explicit fields win), the tuned default
keeps the project's values, and every method runs its paper preset under the method contract."""

from __future__ import annotations

import pytest

from unlearnops.plugin import PluginError, load_plugins, parse_config, run_method
from unlearnops.plugins.zoo_common import REFERENCE_LOOP, ClassicConfig
from unlearnops.testing import tiny_task

CLASSIC = ("ft", "ga", "l1sparse", "rl", "salun", "scrub", "ssd", "boundary")


@pytest.mark.parametrize("name", CLASSIC)
def test_paper_preset_applies_the_reference_defaults(name):
    method = load_plugins().get(name)
    assert issubclass(method.Config, ClassicConfig) and method.Config.PAPER and method.Config.PAPER_SOURCE
    tuned, paper = method.Config(), parse_config(method, {"preset": "paper"})
    assert set(method.Config.PAPER) <= set(method.Config.model_fields)
    for key, value in {**REFERENCE_LOOP, **method.Config.PAPER}.items():
        assert getattr(paper, key) == value, key
    assert any(getattr(tuned, k) != v for k, v in method.Config.PAPER.items())  # the presets differ
    pinned = parse_config(method, {"preset": "paper", "batch_size": 7})
    assert pinned.batch_size == 7  # an explicit value wins over the preset
    with pytest.raises(PluginError):
        parse_config(method, {"preset": "papers"})


@pytest.mark.parametrize("name", CLASSIC)
def test_paper_preset_runs_under_the_method_contract(name):
    import torch

    method = load_plugins().get(name)
    task = tiny_task()
    config = parse_config(method, {"preset": "paper", "epochs": 1} if "epochs" in method.Config.model_fields
                          else {"preset": "paper"})
    result = run_method(method, task.model, task.inputs, config, torch.device("cpu"))
    assert result.details is not None and set(result.changed_parameters) <= set(dict(task.model.named_parameters()))
