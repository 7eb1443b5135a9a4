"""NegGrad+: gradient ascent on the forget set balanced by descent on retain batches, until the forget
accuracy reaches the held-out level; and a TorchScript exporter."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from pydantic import Field
from torch.nn import functional as F

from unlearnops.plugin import Method, MethodConfig, UnlearnResult, changed_parameters, hookimpl, parameter_snapshot


class NegGradPlusConfig(MethodConfig):
    lr: float = Field(1e-3, gt=0)
    max_steps: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)


def _tensors(samples, device):
    x = torch.as_tensor(np.asarray(samples.features), dtype=torch.float32, device=device)
    return x, torch.as_tensor(np.asarray(samples.labels), dtype=torch.long, device=device)


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).float().mean())


class NegGradPlus(Method):
    name = "neggrad-plus"
    version = "0.2.0"
    Config = NegGradPlusConfig
    needs_retain = True
    supports_gpu = True

    def unlearn(self, model, inputs, config, device):
        generator = torch.Generator().manual_seed(config.seed)
        before = parameter_snapshot(model)
        model.eval()
        forget_x, forget_y = _tensors(inputs.forget, device)
        retain_x, retain_y = _tensors(inputs.retain, device)
        target = _accuracy(model, *_tensors(inputs.holdout, device))
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        steps = 0
        while steps < config.max_steps and _accuracy(model, forget_x, forget_y) > target:
            batch = torch.randint(len(retain_y), (config.batch_size,), generator=generator).to(device)
            loss = F.cross_entropy(model(retain_x[batch]), retain_y[batch]) - F.cross_entropy(model(forget_x), forget_y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
        return UnlearnResult(model=model, method=self.name, changed_parameters=changed_parameters(model, before),
                             details={"steps": steps, "target_accuracy": target})


@hookimpl
def register_methods(register):
    register(NegGradPlus())


class TorchScriptExporter:
    """Writes the model as TorchScript (traced on the sample) and checks the file against the model."""

    name = "torchscript"
    version = "0.2.0"
    suffix = ".torchscript"

    def export(self, model, sample, path):
        x = torch.as_tensor(np.asarray(sample[:8]), dtype=torch.float32)
        with torch.no_grad():
            torch.jit.trace(model, x).save(str(path))
            diff = float((torch.jit.load(str(path))(x) - model(x)).abs().max())
        if diff > 1e-4:
            raise ValueError(f"TorchScript output differs from the model by {diff}")
        return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "max_abs_diff": diff}


@hookimpl
def register_exporters(register):
    register(TorchScriptExporter())
