"""The public types unlearning methods work with, and the registry that collects them through pluggy."""

from __future__ import annotations

import copy
import importlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pluggy
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from unlearnops import hookspecs

#: Built-in plugin modules, registered like external ones but without needing an installed entry point.
BUILTIN_PLUGINS = ("unlearnops.plugins.slug", "unlearnops.plugins.retrain")

#: Plugins registered at run time with :func:`register_plugin` (programmatic use, tests).
_RUNTIME_PLUGINS: dict[str, object] = {}

#: Comma-separated names of external entry points allowed to load; empty string loads none. Unset: all.
PLUGINS_ENV = "UNLEARNOPS_PLUGINS"


@dataclass
class Samples:
    """Model inputs and integer labels of one group of samples."""

    features: np.ndarray
    labels: np.ndarray
    sample_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class UnlearnInputs:
    forget: Samples
    retain: Samples
    #: Held-out non-members: the level the forget set should fall to for sample-level forgetting.
    holdout: Samples
    #: Largest allowed accuracy drop on held-out data while searching a step.
    utility_max_drop: float = 0.02
    #: One boolean mask over ``forget`` per deletion request, when a batch holds several.
    forget_groups: list[np.ndarray] | None = None
    #: Every remaining training sample, for exact methods (retraining); None when the caller has none.
    retain_full: Samples | None = None
    #: Builds an untrained model of the same architecture (exact methods), and the workspace's training
    #: parameters (epochs, batch_size, lr, seed).
    model_factory: Callable[[], nn.Module] | None = None
    train_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnlearnResult:
    """What a method did: the changed model and an account of the change."""

    model: nn.Module
    method: str
    #: parameter name -> relative change ‖W_new − W_old‖ / ‖W_old‖, only for parameters that changed.
    changed_parameters: dict[str, float]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class PluginError(RuntimeError):
    """A plugin could not be loaded, was misconfigured, or misbehaved; the message names it."""


class MethodRegistry:
    def __init__(self) -> None:
        self.methods: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.errors: list[str] = []

    def get(self, name: str):
        if name not in self.methods:
            known = ", ".join(sorted(self.methods)) or "none"
            raise PluginError(f"unknown unlearning method {name!r} (registered: {known})")
        return self.methods[name]


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object or module for this process, as if it came from an entry point."""
    _RUNTIME_PLUGINS[name] = plugin


def unregister_plugin(name: str) -> None:
    _RUNTIME_PLUGINS.pop(name, None)


def plugin_manager() -> tuple[pluggy.PluginManager, list[str]]:
    """A plugin manager with the built-ins and the allowed external plugins; returns load errors too."""
    pm = pluggy.PluginManager("unlearnops")
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    for name, plugin in _RUNTIME_PLUGINS.items():
        pm.register(plugin, name=name)
    errors = []
    allowed = os.environ.get(PLUGINS_ENV)
    allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    from importlib.metadata import entry_points

    for ep in entry_points(group="unlearnops"):
        if allowed_names is not None and ep.name not in allowed_names:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin is reported, never fatal for the others
            errors.append(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc!r}")
    return pm, errors


def load_methods() -> MethodRegistry:
    pm, errors = plugin_manager()
    registry = MethodRegistry()
    registry.errors.extend(errors)
    for impl in pm.hook.register_methods.get_hookimpls():
        source = "built-in" if impl.plugin_name in BUILTIN_PLUGINS else impl.plugin_name

        def register(method, _source=source):
            name = getattr(method, "name", None)
            if not name or name in registry.methods:
                registry.errors.append(f"{_source}: method name {name!r} missing or already registered")
                return
            registry.methods[name] = method
            registry.sources[name] = _source

        try:
            impl.function(register=register)
        except Exception as exc:
            registry.errors.append(f"plugin {impl.plugin_name!r} raised in register_methods: {exc!r}")
    return registry


def parse_config(method, overrides: dict[str, Any]) -> BaseModel:
    """Validate ``key=value`` overrides against the method's ``Config``; errors name the field."""
    try:
        return method.Config(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PluginError(f"invalid config for method {method.name!r}: {problems}") from exc


def run_method(method, model: nn.Module, inputs: UnlearnInputs, config: BaseModel, device: torch.device):
    """Call a method and check its result; any misbehaviour becomes a :class:`PluginError` naming it."""
    if device.type == "cuda" and not method.supports_gpu:
        device = torch.device("cpu")
    model = copy.deepcopy(model).to(device)  # the caller's model is never changed
    started = time.perf_counter()
    try:
        result = method.unlearn(model, inputs, config, device)
    except Exception as exc:
        raise PluginError(f"method {method.name!r} raised: {exc!r}") from exc
    if not isinstance(result, UnlearnResult) or not isinstance(result.model, nn.Module):
        raise PluginError(f"method {method.name!r} returned {type(result).__name__}, not an UnlearnResult")
    devices = {p.device.type for p in result.model.parameters()}
    if devices != {device.type}:
        raise PluginError(f"method {method.name!r} left parameters on {sorted(devices)}, expected {device.type}")
    for name, p in result.model.named_parameters():
        if not torch.isfinite(p).all():
            raise PluginError(f"method {method.name!r} produced non-finite values in {name}")
    result.seconds = result.seconds or (time.perf_counter() - started)
    return result
