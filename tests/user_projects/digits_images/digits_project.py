"""A user's project: 8x8 grayscale digit images on disk, a small CNN and a hand-written training loop."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(12 * 4 * 4, 48), nn.ReLU(), nn.Linear(48, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train(model, features, labels, *, epochs, batch_size, lr, seed, device="cpu", progress=None, momentum=0.9):
    """SGD with momentum; ``momentum`` comes from params.yaml like the other keys."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            loss.backward()
            optimizer.step()
        if progress:
            progress(epoch + 1, float(loss))
    return model.eval()


def write_data(directory: Path) -> Path:
    """Write the scikit-learn digits as PNG files plus manifest.csv (what the user already has)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        name = f"img_{i:04d}.png"
        Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(images / name)
        rows.append({"sample_id": f"scan-{i:04d}", "subject_id": f"writer-{i % 180:03d}", "label": int(label),
                     "path": f"images/{name}"})
    manifest = directory / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
