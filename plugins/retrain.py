"""Exact unlearning: train a fresh model from scratch on the remaining training data.

The gold standard every approximate method is judged against, and the last rung when a fast method
cannot be certified. Costs a full training run.
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel, ConfigDict, Field

from unlearnops import hookimpl
from unlearnops.methods import UnlearnInputs, UnlearnResult
from unlearnops.model import train_model


class RetrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    epochs: int | None = Field(None, ge=1, description="Default: the workspace's training epochs.")
    batch_size: int | None = Field(None, ge=1, description="Default: the workspace's batch size.")
    lr: float | None = Field(None, gt=0, description="Default: the workspace's learning rate.")


class Retrain:
    name = "retrain"
    version = "0.1.0"
    Config = RetrainConfig
    needs_retain = True
    supports_gpu = True

    def unlearn(self, model, inputs: UnlearnInputs, config: RetrainConfig, device) -> UnlearnResult:
        if inputs.retain_full is None or inputs.model_factory is None:
            raise ValueError("retrain needs the full retain set and the model factory")
        started = time.perf_counter()
        params = inputs.train_params
        fresh = train_model(
            inputs.model_factory(),
            inputs.retain_full.features,
            inputs.retain_full.labels,
            epochs=config.epochs or params["epochs"],
            batch_size=config.batch_size or params["batch_size"],
            lr=config.lr or params["lr"],
            seed=config.seed,
            device=device,
        )
        old = dict(model.named_parameters())
        changed = {
            name: float((p.detach() - old[name].detach()).norm() / old[name].detach().norm().clamp_min(1e-12))
            for name, p in fresh.named_parameters()
        }
        return UnlearnResult(
            model=fresh,
            method=self.name,
            changed_parameters=changed,
            seconds=time.perf_counter() - started,
            details={"trained_on": len(inputs.retain_full), "epochs": config.epochs or params["epochs"]},
        )


@hookimpl
def register_methods(register):
    register(Retrain())
