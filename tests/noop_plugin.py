"""'Unlearning' methods that do not forget: ``noop`` changes nothing, ``tiny-noise`` adds noise far below the
weights' scale (every weight moves, the predictions do not), ``fake-exact`` changes nothing but claims to be
exact. Every gate suite must refuse to certify any of them."""

import torch
from pydantic import BaseModel

from unlearnops.plugin import UnlearnResult, changed_parameters, hookimpl, parameter_snapshot


class NoOp:
    name = "noop"
    version = "0"
    needs_retain = False
    supports_gpu = True

    class Config(BaseModel):
        seed: int = 0

    def unlearn(self, model, inputs, config, device):
        return UnlearnResult(model=model, method=self.name, changed_parameters={}, seconds=0.0)


class FakeExact(NoOp):
    """Claims to retrain (``exact``) and returns the parent: the flow must not take the claim."""

    name = "fake-exact"
    exact = True


class TinyNoise:
    name = "tiny-noise"
    version = "0"
    needs_retain = False
    supports_gpu = True

    class Config(BaseModel):
        seed: int = 0
        scale: float = 1e-4

    def unlearn(self, model, inputs, config, device):
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
        before = parameter_snapshot(model)
        with torch.no_grad():
            for p in model.parameters():
                scale = config.scale * float(p.detach().abs().mean().clamp_min(1e-3))
                p.add_((torch.randn(p.shape, generator=generator) * scale).to(p.device))
        return UnlearnResult(model=model, method=self.name, changed_parameters=changed_parameters(model, before))


class NoOpPlugin:
    @hookimpl
    def register_methods(self, register):
        register(NoOp())
        register(TinyNoise())
        register(FakeExact())
