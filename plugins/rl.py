"""RL: random labels (Golatkar et al. 2020; Hayase et al.; as in Jia et al. 2023 and Fan et al. 2024, SalUn).

Each forget sample gets a uniformly drawn *wrong* class (fixed for the run, from ``config.seed``); the model
is fine-tuned on those relabelled forget samples and the retain data, shuffled together into one training
set (as the reference implementation concatenates them). The paper's CIFAR
setting is 10 epochs of SGD at lr 0.01-0.1; a memorized tiny model needs far fewer steps — with the default
early stop at the held-out level (checked after every step) and the utility guard, it rarely runs more than
one or two epochs here. ``mask`` (SalUn) restricts the update to chosen weights.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch.nn import functional as F

from unlearnops import hookimpl
from unlearnops.methods import Method, UnlearnInputs, UnlearnResult, changed_parameters, parameter_snapshot
from unlearnops.plugins.zoo_common import (
    ClassicConfig, Clock, Data, Target, TrainLoop, make_optimizer, n_classes, random_wrong_labels,
)


class RLConfig(ClassicConfig):
    epochs: int = Field(10, ge=1, description="Most passes over the forget set.")
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(64, ge=1)


def random_label_finetune(model, inputs: UnlearnInputs, config, device, clock: Clock,
                          mask: dict[str, torch.Tensor] | None = None) -> tuple[dict, Target]:
    """The RL loop; ``mask`` (parameter name -> 0/1 tensor) zeroes the gradient of unmasked weights, and
    parameters without a mask entry (or with an all-zero one) are not optimized at all."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    forget, retain = Data(inputs.forget, device), Data(inputs.retain, device)
    target = Target(model, inputs, forget, config, device)
    relabelled = random_wrong_labels(forget.y, n_classes(model, forget), generator)
    params = [p for name, p in model.named_parameters()
              if mask is None or (name in mask and bool(mask[name].any()))]
    masks = None if mask is None else [mask[name] for name, p in model.named_parameters()
                                       if name in mask and bool(mask[name].any())]
    # With a mask, weight decay is added to the gradient before masking, so unmasked weights stay put.
    decay = config.weight_decay if masks is not None else 0.0
    optimizer = make_optimizer(params, config.optimizer, config.lr, config.momentum,
                               0.0 if masks is not None else config.weight_decay)
    # One dataset of relabelled forget samples and retain samples, shuffled together (as the reference
    # implementation concatenates them): each sample weighs the same.
    x = torch.cat([forget.x, retain.x]) if len(retain) else forget.x
    y = torch.cat([relabelled, retain.y]) if len(retain) else relabelled

    def mask_gradients():
        for p, m in zip(params, masks):
            if p.grad is not None:
                p.grad.add_(p.detach(), alpha=decay).mul_(m)

    loop = TrainLoop(model, optimizer, target, clock, generator, device,
                     after_backward=mask_gradients if masks is not None else None)
    loop.run(config.epochs, len(x), config.batch_size, lambda idx, _: F.cross_entropy(model(x[idx]), y[idx]))
    return {"steps": loop.steps, "losses": loop.step_losses}, target


class RL(Method):
    name = "rl"
    version = "0.1.0"
    Config = RLConfig
    needs_retain = True
    supports_gpu = True

    def unlearn(self, model, inputs: UnlearnInputs, config: RLConfig, device) -> UnlearnResult:
        clock = Clock(config.max_seconds)
        before = parameter_snapshot(model)
        details, target = random_label_finetune(model, inputs, config, device, clock)
        details.update(target.details(model), **clock.details())
        return UnlearnResult(model=model, method=self.name, changed_parameters=changed_parameters(model, before),
                             seconds=clock.elapsed, details=details)


@hookimpl
def register_methods(register):
    register(RL())
