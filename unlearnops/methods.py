"""The public plugin API (the types methods and gates work with, base classes for authors) and the registry
that collects methods, gates, locators and exporters from built-ins and entry points through pluggy."""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import pluggy
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from unlearnops import hookspecs

if TYPE_CHECKING:
    import pandas as pd

    from unlearnops.model import Evaluation

log = logging.getLogger(__name__)

#: Built-in plugin modules, registered like external ones but without needing an installed entry point.
BUILTIN_PLUGINS = (
    "unlearnops.plugins.slug",
    "unlearnops.plugins.retrain",
    "unlearnops.plugins.ft",
    "unlearnops.plugins.ga",
    "unlearnops.plugins.l1sparse",
    "unlearnops.plugins.scrub",
    "unlearnops.plugins.ssd",
    "unlearnops.plugins.upcore",
    "unlearnops.plugins.rl",
    "unlearnops.plugins.salun",
    "unlearnops.plugins.boundary",
    "unlearnops.plugins.sisa",
    "unlearnops.plugins.builtin_gates",
    "unlearnops.plugins.builtin_adapters",
    "unlearnops.plugins.builtin_locators",
    "unlearnops.plugins.builtin_exporters",
)

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
    """What a method gets to work with; it must not modify any of it."""

    forget: Samples
    retain: Samples
    #: Held-out non-members: the level the forget set should fall to for sample-level forgetting. In the
    #: pipeline this is the ``calibration`` half of the held-out split; the gates judge on the other half.
    holdout: Samples
    #: Largest allowed accuracy drop on held-out data while searching a step.
    utility_max_drop: float = 0.02
    #: One boolean mask over ``forget`` per deletion request, when a batch holds several.
    forget_groups: list[np.ndarray] | None = None
    #: Every remaining training sample, for exact methods (retraining); None when the caller has none.
    retain_full: Samples | None = None
    #: Builds an untrained model of the same architecture (exact methods), and the workspace's training
    #: parameters (epochs, batch_size, lr, seed, and any extra keys of ``params.yaml``).
    model_factory: Callable[[], nn.Module] | None = None
    train_params: dict[str, Any] = field(default_factory=dict)
    #: The workspace's training function; call it with :func:`call_training` (which adds ``sample_ids=`` when
    #: the function takes them). None means :func:`unlearnops.model.train_model`.
    train_function: Callable[..., nn.Module] | None = None


@dataclass
class UnlearnResult:
    """What a method did: the changed model and an account of the change."""

    model: nn.Module
    method: str
    #: parameter name -> relative change ‖W_new − W_old‖ / ‖W_old‖, only for parameters that changed. The
    #: method names the parameters it changed; :func:`run_method` checks the names and measures the values.
    changed_parameters: dict[str, float]
    #: Wall-clock seconds of the ``unlearn`` call (set by :func:`run_method`).
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class MethodConfig(BaseModel):
    """Base for a method's ``Config``: a ``seed`` and no unknown keys (a typo is an error naming it)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0


#: Training parameters used where the caller gives none (the workspace always gives its ``params.yaml``).
DEFAULT_TRAINING = {"epochs": 20, "batch_size": 64, "lr": 1e-3}


class RetrainingConfig(MethodConfig):
    """Config of a method that trains from scratch: optional overrides of the workspace's training parameters."""

    epochs: int | None = Field(None, ge=1, description="Default: the workspace's training epochs.")
    batch_size: int | None = Field(None, ge=1, description="Default: the workspace's batch size.")
    lr: float | None = Field(None, gt=0, description="Default: the workspace's learning rate.")


def accepts_sample_ids(train_function: Callable[..., nn.Module]) -> bool:
    """Whether a training function's signature names a ``sample_ids`` parameter."""
    try:
        return "sample_ids" in inspect.signature(train_function).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False


def call_training(train_function: Callable[..., nn.Module] | None, model: nn.Module, samples: Samples, *,
                  device: torch.device | str = "cpu", progress: Callable[[int, float], None] | None = None,
                  **params: Any) -> nn.Module:
    """Train ``model`` on ``samples`` the way every part of unlearnops calls a workspace's training function:
    ``fn(model, features, labels, device=..., progress=..., **params)``, plus ``sample_ids=`` (the rows' ids,
    in order) when the function's signature names a ``sample_ids`` parameter — for training that depends on
    which sample is which, like SISA's sharding by id. ``None`` means :func:`unlearnops.model.train_model`."""
    if train_function is None:
        from unlearnops.model import train_model as train_function
    extra: dict[str, Any] = {}
    if accepts_sample_ids(train_function):
        if len(samples.sample_ids) != len(samples):
            raise ValueError(f"the training function {getattr(train_function, '__name__', train_function)!r} "
                             f"takes sample_ids, but {len(samples)} samples came with "
                             f"{len(samples.sample_ids)} ids")
        extra["sample_ids"] = list(samples.sample_ids)
    return train_function(model, samples.features, samples.labels, device=device, progress=progress,
                          **params, **extra)


def reinitialized(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every parameter drawn afresh by its layer's ``reset_parameters`` (from the
    global torch RNG) — for exact methods run without a model factory. Refuses a model with parameters no
    layer re-draws: keeping their trained values would carry the forgotten data into the "fresh" model."""
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    old = dict(model.named_parameters())
    kept = [name for name, p in fresh.named_parameters() if p.numel() and torch.equal(p.detach(), old[name].detach())]
    if kept:
        raise ValueError(f"cannot re-initialize {', '.join(kept[:5])} (no layer re-draws them): give the method "
                         "a model factory (the workspace's project.model_factory)")
    return fresh


def training_params(inputs: "UnlearnInputs", config: RetrainingConfig) -> dict[str, Any]:
    """The keyword arguments for the training function: :data:`DEFAULT_TRAINING`, then the workspace's
    parameters, then the config's overrides, with the config's seed."""
    params = {**DEFAULT_TRAINING, **inputs.train_params}
    for key in ("epochs", "batch_size", "lr"):
        params[key] = getattr(config, key) or params[key]
    params["seed"] = config.seed
    return params


class Method:
    """Optional base class for unlearning methods: the declarations with their defaults.

    Subclasses set ``name``, ``version`` and ``Config`` and implement ``unlearn`` (see
    :func:`unlearnops.hookspecs.register_methods` for the contract).
    """

    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs_retain: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = True
    model_families: ClassVar[tuple[str, ...]] = ("Module",)
    supports_gpu: ClassVar[bool] = False
    #: True only for methods whose result never saw the forgotten data (retraining without it).
    exact: ClassVar[bool] = False


@dataclass
class GateEvidence:
    """What gates judge a candidate on (see :func:`unlearnops.hookspecs.register_gates`)."""

    manifest_before: pd.DataFrame
    manifest_after: pd.DataFrame
    forget_ids: list[str]
    forget_hashes: list[str]
    forget_labels: np.ndarray
    holdout_labels: np.ndarray
    #: ``"forget"``, ``"holdout"``, ``"test"`` -> per-sample evaluation of the parent model.
    before: dict[str, Evaluation]
    #: The same for the unlearned model.
    after: dict[str, Evaluation]
    seed: int = 0
    #: Gates may leave named JSON-serializable records here; they are stored with the version.
    artifacts: dict[str, Any] = field(default_factory=dict)




class PluginError(RuntimeError):
    """A plugin could not be loaded, was misconfigured, or misbehaved; the message names it."""


#: kind -> (registration hook, attributes every registered object of that kind must have)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "method": ("register_methods", ("Config", "needs_retain", "supports_gpu", "unlearn")),
    "gate": ("register_gates", ("description", "check")),
    "locator": ("register_locators", ("kind", "locate")),
    "exporter": ("register_exporters", ("suffix", "export")),
    "adapter": ("register_dataset_adapters", ("description", "Options", "load")),
}


@dataclass
class Registered:
    """One registered method, gate, locator or exporter and where it came from."""

    kind: str
    name: str
    version: str
    obj: Any
    #: ``built-in``, ``runtime`` (:func:`register_plugin`) or the distribution that provided it ("dist 1.0").
    source: str
    #: The pluggy plugin name: built-in module, entry-point name or runtime name.
    plugin: str


class Registry:
    """Everything the loaded plugins registered, by kind, plus the reason for every plugin that failed."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.entries: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        self.errors: list[str] = []

    @property
    def methods(self) -> dict[str, Any]:
        return {name: e.obj for name, e in self.entries["method"].items()}

    @property
    def sources(self) -> dict[str, str]:
        """Method name -> source."""
        return {name: e.source for name, e in self.entries["method"].items()}

    def get(self, name: str):
        """The method called ``name``; an unknown name is a :class:`PluginError` that also lists plugin
        load failures (the method may have been in a plugin that failed)."""
        return self.named("method", [name])[name]

    def named(self, kind: str, names: list[str]) -> dict[str, Any]:
        """The registered objects of ``kind`` called ``names``, in that order; an unknown name is a
        :class:`PluginError` that lists what is registered and the plugins that failed to load."""
        entries = self.entries[kind]
        unknown = [n for n in names if n not in entries]
        if unknown:
            problems = f"; plugin problems: {' | '.join(self.errors)}" if self.errors else ""
            label = "unlearning method" if kind == "method" else kind
            raise PluginError(f"unknown {label} {', '.join(map(repr, unknown))} (registered: "
                              f"{', '.join(sorted(entries)) or 'none'}){problems}")
        return {n: entries[n].obj for n in names}

    def before_unlearn(self, event: dict) -> None:
        """Call every ``before_unlearn`` hook; the first that raises vetoes with a :class:`PluginError`."""
        for impl in self.pm.hook.before_unlearn.get_hookimpls():
            try:
                impl.function(event=event)
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r} stopped the batch in before_unlearn: {exc!r}") from exc

    def after_certify(self, event: dict) -> list[str]:
        """Call every ``after_certify`` hook; returns (and logs) one message per hook that raised."""
        errors = []
        for impl in self.pm.hook.after_certify.get_hookimpls():
            try:
                impl.function(event=event)
            except Exception as exc:
                errors.append(f"plugin {impl.plugin_name!r} raised in after_certify: {exc!r}")
                log.warning(errors[-1])
        return errors


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object or module for this process, as if it came from an entry point."""
    _RUNTIME_PLUGINS[name] = plugin


def unregister_plugin(name: str) -> None:
    _RUNTIME_PLUGINS.pop(name, None)


def allowed_external_plugins() -> set[str] | None:
    """Entry-point names allowed by ``UNLEARNOPS_PLUGINS``; None when unset (all allowed)."""
    allowed = os.environ.get(PLUGINS_ENV)
    return None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}


def plugin_manager() -> tuple[pluggy.PluginManager, dict[str, str], list[str]]:
    """A plugin manager with the built-ins, runtime plugins and the allowed entry points.

    Returns the manager, plugin name -> source, and one message per entry point that failed to load.
    """
    pm = pluggy.PluginManager("unlearnops")
    pm.add_hookspecs(hookspecs)
    sources: dict[str, str] = {}
    errors: list[str] = []
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        sources[module_name] = "built-in"
    for name, plugin in _RUNTIME_PLUGINS.items():
        pm.register(plugin, name=name)
        sources[name] = "runtime"
    allowed = allowed_external_plugins()
    for ep in entry_points(group="unlearnops"):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.value
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin is reported, never fatal for the others
            errors.append(f"plugin {ep.name!r} ({dist}) failed to load: {exc!r}")
            continue
        sources[ep.name] = dist
    return pm, sources, errors


def contract_problems(kind: str, obj: object) -> list[str]:
    """What is missing or ill-typed in a registered object, by the contract of its kind (empty: fine)."""
    problems = []
    for attr in ("name", "version"):
        value = getattr(obj, attr, None)
        if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
            problems.append(f"{attr} must be a non-empty string without spaces, got {value!r}")
    problems += [f"missing {attr!r}" for attr in KINDS[kind][1] if not hasattr(obj, attr)]
    if problems:
        return problems
    callables = {"method": "unlearn", "gate": "check", "locator": "locate", "exporter": "export", "adapter": "load"}
    if not callable(getattr(obj, callables[kind])):
        problems.append(f"{callables[kind]} is not callable")
    if kind == "locator" and getattr(obj, "kind", None) not in ("exact", "near-duplicate"):
        problems.append(f"kind must be 'exact' or 'near-duplicate', got {getattr(obj, 'kind', None)!r}")
    if kind == "method":
        config = obj.Config
        if not (isinstance(config, type) and issubclass(config, BaseModel)):
            problems.append("Config must be a pydantic BaseModel subclass")
        elif "seed" not in config.model_fields:
            problems.append("Config must have a 'seed' field")
        for flag in ("needs_retain", "needs_labels", "supports_gpu"):
            if not isinstance(getattr(obj, flag, True), bool):
                problems.append(f"{flag} must be a bool")
        families = getattr(obj, "model_families", ("Module",))
        if not (isinstance(families, tuple) and families and all(isinstance(f, str) for f in families)):
            problems.append("model_families must be a non-empty tuple of class names")
    return problems


def load_plugins() -> Registry:
    """Load built-in, runtime and allowed external plugins and collect what they register.

    Registration is all-or-nothing per plugin and hook: a plugin whose hook raises, or that registers an
    object breaking its kind's contract or a name already taken, contributes nothing for that kind and
    is reported in ``errors``.
    """
    pm, sources, errors = plugin_manager()
    registry = Registry(pm)
    registry.errors.extend(errors)
    for kind, (hook_name, _) in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin, source = impl.plugin_name, sources.get(impl.plugin_name, impl.plugin_name)
            offered: list[object] = []
            try:
                impl.function(register=offered.append)
            except Exception as exc:
                registry.errors.append(f"plugin {plugin!r} ({source}) raised in {hook_name}: {exc!r}")
                continue
            problems = []
            names = [getattr(obj, "name", None) for obj in offered]
            for obj, name in zip(offered, names):
                problems += [f"{kind} {name!r}: {p}" for p in contract_problems(kind, obj)]
                if name in registry.entries[kind] or names.count(name) > 1:
                    problems.append(f"{kind} name {name!r} is already registered")
            if problems:
                registry.errors.append(f"plugin {plugin!r} ({source}) registered nothing: {'; '.join(problems)}")
                continue
            for obj in offered:
                registry.entries[kind][obj.name] = Registered(kind, obj.name, obj.version, obj, source, plugin)
    return registry


def parse_config(method, overrides: dict[str, Any]) -> BaseModel:
    """Validate ``key=value`` overrides against the method's ``Config``; errors name the field."""
    try:
        return method.Config(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PluginError(f"invalid config for method {method.name!r}: {problems}") from exc


def parameter_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter, to compare against with :func:`changed_parameters`."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}


def changed_parameters(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> dict[str, float]:
    """Parameter name -> relative change ‖W − W₀‖ / ‖W₀‖ since ``snapshot``, for those that changed."""
    changed = {}
    for name, p in model.named_parameters():
        new, old = p.detach().cpu(), snapshot[name]
        if not torch.equal(new, old):
            changed[name] = float((new - old).norm() / old.norm().clamp_min(1e-12))
    return changed


def run_method(method, model: nn.Module, inputs: UnlearnInputs, config: BaseModel, device: torch.device):
    """Run a method on a private copy of ``model`` (which stays untouched) and check the result.

    Any misbehaviour becomes a :class:`PluginError` naming the method: an exception, another return type,
    different parameter names, a parameter or buffer off the target device, non-finite weights, or
    ``changed_parameters`` naming other parameters than those that changed. The result's
    ``changed_parameters`` holds the measured relative change of each, ``seconds`` the call's duration.
    """
    name = method.name
    if device.type == "cuda" and not method.supports_gpu:
        device = torch.device("cpu")
    families = getattr(method, "model_families", ("Module",))
    if not {cls.__name__ for cls in type(model).__mro__} & set(families):
        raise PluginError(f"method {name!r} handles model families {list(families)}, not {type(model).__name__}")
    if method.needs_retain and len(inputs.retain) == 0:
        raise PluginError(f"method {name!r} needs retain samples and got none")
    original = parameter_snapshot(model)
    working = copy.deepcopy(model).to(device)
    started = time.perf_counter()
    try:
        result = method.unlearn(working, inputs, config, device)
    except Exception as exc:
        raise PluginError(f"method {name!r} raised: {exc!r}") from exc
    seconds = time.perf_counter() - started
    if not isinstance(result, UnlearnResult) or not isinstance(result.model, nn.Module):
        raise PluginError(f"method {name!r} returned {type(result).__name__}, not an UnlearnResult")
    params = dict(result.model.named_parameters())
    if set(params) != set(original):
        raise PluginError(f"method {name!r} returned a model with other parameters than the one it was given")
    devices = {t.device.type for t in [*params.values(), *result.model.buffers()]}
    if devices != {device.type}:
        raise PluginError(f"method {name!r} left parameters on {sorted(devices)}, expected {device.type}")
    for pname, p in params.items():
        if not torch.isfinite(p).all():
            raise PluginError(f"method {name!r} produced non-finite values in {pname}")
    changed = changed_parameters(result.model, original)
    claimed = result.changed_parameters
    if not isinstance(claimed, dict) or set(claimed) != set(changed):
        reported = sorted(claimed) if isinstance(claimed, dict) else claimed
        raise PluginError(f"method {name!r} reported changing {reported!r} but changed {sorted(changed)}")
    result.changed_parameters = changed
    result.seconds = seconds
    return result
