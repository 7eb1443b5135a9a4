"""A user's project whose model is a SISA ensemble: three copies of a small MLP, each trained by the user's
own loop on its shard of the records, so that deleting a record retrains only the shard that held it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from unlearnops.plugins.sisa import ensemble_factory, sharded_training

N_FEATURES = 30
N_SHARDS = 3


class RecordNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))
        self.net = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def train_one(model, features, labels, *, epochs, lr, seed, device="cpu", progress=None, **_unused):
    """Full-batch Adam on one shard; fits the scaling buffers on that shard's features first."""
    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32).to(device)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
    model.to(device).train()
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0).clamp_min(1e-6))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if progress:
            progress(epoch + 1, float(loss))
    return model.eval()


make_ensemble = ensemble_factory(RecordNet, N_SHARDS)
train = sharded_training(train_one)


def write_data(directory: Path) -> Path:
    """Write the scikit-learn breast-cancer table as records.csv (one row per record, a patient column)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    table = data.data.copy()
    table.columns = [c.replace(" ", "_") for c in table.columns]
    table.insert(0, "diagnosis", data.target.to_numpy())
    table.insert(0, "patient", [f"patient-{i % 150:03d}" for i in range(len(table))])
    table.insert(0, "record_id", [f"rec-{i:04d}" for i in range(len(table))])
    path = directory / "records.csv"
    table.to_csv(path, index=False)
    return path
