"""GA: gradient ascent on the forget loss (NegGrad; Thudi et al. 2022, Golatkar et al. 2020, as in Jia et al. 2023).

SGD steps that *increase* the cross-entropy of the forget samples, bounded two ways: at most ``epochs``
passes over the forget set, and (``stop_at_target``) a stop as soon as forget accuracy reaches the held-out
level (0 on a forgotten class), checked after every step — unbounded ascent collapses the model. The paper's
SGD at lr 1e-5..1e-4 over 5 epochs (CIFAR-scale models) barely moves a model that memorized its forget set
(losses near 0, gradients near 0); the default here is Adam at 3e-4 with small batches, which reaches the
target (or the utility guard) in tens of steps. ``optimizer=sgd`` gives the paper's form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from unlearnops.plugin import UnlearnInputs, hookimpl, lazy_module
from unlearnops.plugins.zoo_common import ClassicConfig, ClassicMethod, Clock, Data, Target, TrainLoop, make_optimizer


if TYPE_CHECKING:
    import torch
    from torch.nn import functional as F
else:  # imported on first use: loading and listing plugins imports no torch nor pandas
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")


class GAConfig(ClassicConfig):
    PAPER = {"epochs": 5, "optimizer": "sgd", "lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256}
    PAPER_SOURCE = "OPTML-Group/Unlearn-Sparse unlearn/GA.py and README (GA: 5 epochs, SGD lr 1e-4, momentum 0.9)"

    epochs: int = Field(10, ge=1, description="Most passes over the forget set.")
    optimizer: Literal["sgd", "adam"] = Field("adam", description="Adam: steps of size ~lr even at tiny losses.")
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (the reference: 0.9).")
    weight_decay: float = Field(0.0, ge=0)


class GA(ClassicMethod):
    name = "ga"
    version = "0.1.0"
    Config = GAConfig
    needs_retain = False
    supports_gpu = True

    def algorithm(self, model, inputs: UnlearnInputs, config: GAConfig, device, clock: Clock):
        generator = torch.Generator().manual_seed(config.seed)
        forget = Data(inputs.forget, device)
        target = Target(model, inputs, forget, config, device)
        optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum,
                                   config.weight_decay)
        loop = TrainLoop(model, optimizer, target, clock, generator, device)
        # Minimizing −CE ascends the forget loss.
        loop.run(config.epochs, len(forget), config.batch_size,
                 lambda idx, _: -F.cross_entropy(model(forget.x[idx]), forget.y[idx]))
        return {"steps": loop.steps, "forget_losses": [-v for v in loop.step_losses]}, target


@hookimpl
def register_methods(register):
    register(GA())
