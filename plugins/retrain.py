"""Exact unlearning: train a fresh model from scratch on the remaining training data.

The gold standard every approximate method is judged against, and the last rung when a fast method
cannot be certified. Costs a full training run.
"""

from __future__ import annotations

import time

from unlearnops.plugin import (
    Method,
    RetrainingConfig,
    UnlearnInputs,
    UnlearnResult,
    call_training,
    epoch_progress,
    fresh_model,
    hookimpl,
    training_params,
)


class RetrainConfig(RetrainingConfig):
    """Overrides of the workspace's training parameters for the retrained model."""


class Retrain(Method):
    name = "retrain"
    version = "0.1.0"
    Config = RetrainConfig
    needs_retain = True
    supports_gpu = True
    exact = True

    def unlearn(self, model, inputs: UnlearnInputs, config: RetrainConfig, device) -> UnlearnResult:
        started = time.perf_counter()
        params = training_params(inputs, config)
        retain = inputs.retain_full if inputs.retain_full is not None else inputs.retain
        with epoch_progress(int(params["epochs"]), "retrain") as report:
            fresh = call_training(
                inputs.train_function,
                fresh_model(inputs, model, params["seed"]),  # seeded before it is built: same seed, same weights
                retain,
                device=device,
                progress=report,
                **params,
            ).to(device)
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
            details={"trained_on": len(retain), "epochs": params["epochs"],
                     "from": "model factory" if inputs.model_factory else "re-initialized copy"},
        )


@hookimpl
def register_methods(register):
    register(Retrain())
