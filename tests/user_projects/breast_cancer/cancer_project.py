"""A user's project: a tabular clinical dataset in a CSV with its own column names, an MLP with the
feature scaling built in, and a hand-written full-batch training loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

N_FEATURES = 30


class CancerMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))
        self.net = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def train(model, features, labels, *, epochs, lr, seed, device="cpu", progress=None, weight_decay=1e-4, **_unused):
    """Full-batch AdamW; fits the scaling buffers on the training features first."""
    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32).to(device)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
    model.to(device).train()
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if progress:
            progress(epoch + 1, float(loss))
    return model.eval()


def write_data(directory: Path) -> Path:
    """Write the scikit-learn breast-cancer table as records.csv with the user's own column names."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    table = data.data.copy()
    table.columns = [c.replace(" ", "_") for c in table.columns]
    table.insert(0, "diagnosis", data.target.to_numpy())
    table.insert(0, "patient", [f"patient-{i % 120:03d}" for i in range(len(table))])
    table.insert(0, "record_id", [f"rec-{i:04d}" for i in range(len(table))])
    path = directory / "records.csv"
    table.to_csv(path, index=False)
    return path
