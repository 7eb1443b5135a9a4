"""An 'unlearning' method that changes nothing: every gate suite must refuse to certify it."""

from pydantic import BaseModel

from unlearnops.plugin import UnlearnResult, hookimpl


class NoOp:
    name = "noop"
    version = "0"
    needs_retain = False
    supports_gpu = True

    class Config(BaseModel):
        seed: int = 0

    def unlearn(self, model, inputs, config, device):
        return UnlearnResult(model=model, method=self.name, changed_parameters={}, seconds=0.0)


class NoOpPlugin:
    @hookimpl
    def register_methods(self, register):
        register(NoOp())
