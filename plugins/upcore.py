"""UPCORE pre-step (after "UPCORE: Utility-Preserving Coreset Selection for Balanced Unlearning"): before
unlearning, prune the outliers of the forget set in the model's own representation space and run the
chosen method on the remaining core set only.

The paper's observation: collateral damage to retained data grows with the variance of the forget set's
hidden representations; outlier points contribute most of it, and forgetting of the pruned points mostly
follows from the core set (positive transfer). An Isolation Forest on the penultimate features (the input of
the model's last linear layer) flags the outliers; ``contamination`` sets the share pruned. Every gate still
judges the *whole* forget set, so a pruned point that is not forgotten shows up there.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from pydantic import Field

from unlearnops.plugin import (
    Method,
    MethodConfig,
    Samples,
    UnlearnInputs,
    UnlearnResult,
    hookimpl,
    load_plugins,
    parse_config,
)


class UpcoreConfig(MethodConfig):
    base: str = Field("scrub", description="The method that unlearns the core set (any registered method that "
                      "reads the forget set: scrub, ga, rl, salun, ...).")
    contamination: float = Field(0.1, gt=0, lt=0.5, description="Share of the forget set pruned as outliers.")
    min_core: int = Field(8, ge=1, description="Below this many forget samples nothing is pruned.")
    base_config: dict[str, Any] = Field({}, description="Config overrides of the base method.")


class Upcore(Method):
    name = "upcore"
    version = "0.1.0"
    Config = UpcoreConfig
    needs_retain = False
    supports_gpu = True

    def unlearn(self, model, inputs: UnlearnInputs, config: UpcoreConfig, device) -> UnlearnResult:
        from sklearn.ensemble import IsolationForest

        started = time.perf_counter()
        if config.base == self.name:
            raise ValueError("upcore cannot use itself as its base method")
        base = load_plugins().get(config.base)
        if getattr(device, "type", str(device)) == "cuda" and not base.supports_gpu:
            raise ValueError(f"base method {config.base!r} does not run on CUDA")
        base_config = parse_config(base, {"seed": config.seed, **config.base_config})
        forget = inputs.forget
        keep = np.ones(len(forget), dtype=bool)
        if len(forget) >= config.min_core:
            from unlearnops.plugin import penultimate_features

            hidden = penultimate_features(model, forget.features)
            forest = IsolationForest(contamination=config.contamination, random_state=config.seed)
            keep = forest.fit_predict(hidden) == 1
        core = Samples(forget.features[keep], forget.labels[keep],
                       [s for s, k in zip(forget.sample_ids, keep) if k] if forget.sample_ids else [])
        groups = None if inputs.forget_groups is None else [g[keep] for g in inputs.forget_groups if g[keep].any()]
        core_inputs = dataclasses.replace(inputs, forget=core, forget_groups=groups or None)
        result = base.unlearn(model, core_inputs, base_config, device)
        details = {"base": config.base, "pruned": int((~keep).sum()), "core": int(keep.sum()),
                   "pruned_ids": [s for s, k in zip(forget.sample_ids, keep) if not k] if forget.sample_ids else [],
                   "base_details": result.details}
        return UnlearnResult(model=result.model, method=self.name, changed_parameters=result.changed_parameters,
                             seconds=time.perf_counter() - started, details=details)


@hookimpl
def register_methods(register):
    register(Upcore())
