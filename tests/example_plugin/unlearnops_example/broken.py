"""Deliberately broken plugins: a method that raises, one that moves the model to another device, and an
audit hook that vetoes every batch. The pipeline must report each by name and register nothing."""

from __future__ import annotations

from unlearnops.plugin import Method, UnlearnResult, hookimpl


class Raising(Method):
    name = "broken-raise"
    version = "0.2.0"

    def unlearn(self, model, inputs, config, device):
        raise RuntimeError("deliberate failure inside unlearn")


class WrongDevice(Method):
    name = "broken-device"
    version = "0.2.0"

    def unlearn(self, model, inputs, config, device):
        return UnlearnResult(model=model.to("meta"), method=self.name, changed_parameters={})


class _Registers:
    def __init__(self, method):
        self.method = method

    @hookimpl
    def register_methods(self, register):
        register(self.method)


class _Veto:
    @hookimpl
    def before_unlearn(self, event):
        raise PermissionError(f"policy forbids unlearning with {event['method']}")


raising = _Registers(Raising())
wrong_device = _Registers(WrongDevice())
veto = _Veto()
