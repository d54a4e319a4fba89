"""Model and data of the quickstart: a small MLP with BatchNorm on 8x8 digits, IID partitions."""

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def load_partition(partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    idx = np.array_split(np.random.default_rng(0).permutation(len(x)), num_partitions)[partition_id]
    return torch.tensor(x[idx] / 16.0, dtype=torch.float32), torch.tensor(y[idx])


def test_accuracy(model: nn.Module) -> float:
    x, y = load_digits(return_X_y=True)
    model.eval()
    with torch.no_grad():
        predictions = model(torch.tensor(x / 16.0, dtype=torch.float32)).argmax(1)
    return float((predictions == torch.tensor(y)).float().mean())
