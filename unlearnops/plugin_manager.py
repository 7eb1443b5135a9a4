"""The plugin manager: registers the built-in plugin modules, runtime plugins and the allowed entry points
with pluggy, collects what their hooks register (all or nothing per plugin and hook, with a named reason for
every failure) into a :class:`PluginSet`, and calls the batch hooks.

"Plugin set", not "registry": in unlearnops the registry is MLflow's model registry.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy
from pydantic import BaseModel

from unlearnops import hookspecs

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


class PluginSet:
    """Everything the loaded plugins registered, by kind, plus the reason for every plugin that failed."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.entries: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        self.errors: list[str] = []

    @property
    def methods(self) -> dict[str, Any]:
        """Method name -> method."""
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
    """Forget a plugin registered with :func:`register_plugin` (no error when there is none)."""
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
    if kind == "gate":
        statistics = getattr(obj, "statistics", ())
        if not (isinstance(statistics, tuple) and all(isinstance(k, str) and k.isidentifier() for k in statistics)):
            problems.append(f"statistics must be a tuple of identifier strings, got {statistics!r}")
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


def load_plugins() -> PluginSet:
    """Load built-in, runtime and allowed external plugins and collect what they register.

    Registration is all-or-nothing per plugin and hook: a plugin whose hook raises, or that registers an
    object breaking its kind's contract or a name already taken, contributes nothing for that kind and
    is reported in ``errors``.
    """
    pm, sources, errors = plugin_manager()
    plugins = PluginSet(pm)
    plugins.errors.extend(errors)
    for kind, (hook_name, _) in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin, source = impl.plugin_name, sources.get(impl.plugin_name, impl.plugin_name)
            offered: list[object] = []
            try:
                impl.function(register=offered.append)
            except Exception as exc:
                plugins.errors.append(f"plugin {plugin!r} ({source}) raised in {hook_name}: {exc!r}")
                continue
            problems = []
            names = [getattr(obj, "name", None) for obj in offered]
            for obj, name in zip(offered, names):
                problems += [f"{kind} {name!r}: {p}" for p in contract_problems(kind, obj)]
                if name in plugins.entries[kind] or names.count(name) > 1:
                    problems.append(f"{kind} name {name!r} is already registered")
            if problems:
                plugins.errors.append(f"plugin {plugin!r} ({source}) registered nothing: {'; '.join(problems)}")
                continue
            for obj in offered:
                plugins.entries[kind][obj.name] = Registered(kind, obj.name, obj.version, obj, source, plugin)
    return plugins
