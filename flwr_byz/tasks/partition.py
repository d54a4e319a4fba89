"""Split a dataset among honest nodes: IID or label-Dirichlet heterogeneity (per class or per worker)."""

from __future__ import annotations

import warnings

import numpy as np
from torch import Tensor

SCHEMES = ("per-class", "per-worker")


def partition(
    labels: np.ndarray | Tensor,
    num_partitions: int,
    alpha: float | None,
    seed: int,
    min_partition_size: int | None = None,
    *,
    scheme: str,
) -> list[np.ndarray]:
    """Sorted index arrays of ``num_partitions`` parts.

    ``alpha=None``: IID, a seeded permutation cut into near-equal disjoint parts (sizes differ
    by at most one). Otherwise label skew, small ``alpha`` meaning strong skew, by ``scheme``:

    * ``"per-class"`` (Yurochkin et al. 2019, Lin et al. 2020): for each class ``k`` a share vector
      ``p_k ~ Dir(alpha * 1)`` over partitions splits that class' examples (flwr_datasets'
      ``DirichletPartitioner``): disjoint parts of unequal sizes. Draws are repeated (at most 10
      times, then ``ValueError``) until every part holds at least ``min_partition_size`` examples,
      by default ``min(10, n // num_partitions)``.
    * ``"per-worker"`` (Hsu et al. 2019, as the EPFL/LPD code the paper's setting comes from does it):
      worker ``i`` draws class proportions ``q_i ~ Dir(alpha * 1)`` and ``n // num_partitions`` examples,
      ``round(q_i n / num_partitions)`` of each class (rounding errors go to its largest class), without
      replacement within the worker from that class' examples; parts may overlap (workers draw independently).
    """
    y = np.asarray(labels).reshape(-1)
    n = len(y)
    if not 0 < num_partitions <= n:
        raise ValueError(f"num_partitions must be in [1, {n}], got {num_partitions}")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"alpha must be positive or None (IID), got {alpha}")
    min_size = min(10, n // num_partitions) if min_partition_size is None else min_partition_size
    if not 0 <= min_size <= n // num_partitions:
        raise ValueError(f"min_partition_size must be in [0, {n // num_partitions}], got {min_size}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if alpha is None:
        perm = np.random.default_rng(seed).permutation(n)
        return [np.sort(part) for part in np.array_split(perm, num_partitions)]
    if scheme == "per-worker":
        return per_worker(y, num_partitions, alpha, seed)
    from datasets import Dataset  # imported here: flwr_datasets takes about a second to import
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions, partition_by="label", alpha=alpha, min_partition_size=min_size, seed=seed
    )
    partitioner.dataset = Dataset.from_dict({"label": y, "idx": np.arange(n)})
    with warnings.catch_warnings():  # each redraw warns; redrawing is the documented behaviour
        warnings.simplefilter("ignore", UserWarning)
        parts = [partitioner.load_partition(i).with_format("numpy")[:]["idx"] for i in range(num_partitions)]
    return [np.sort(part.astype(np.int64)) for part in parts]


def per_worker(y: np.ndarray, num_partitions: int, alpha: float, seed: int) -> list[np.ndarray]:
    """The ``"per-worker"`` scheme of :func:`partition`."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    by_class = [np.flatnonzero(y == k) for k in classes]
    size = len(y) // num_partitions
    parts = []
    for _ in range(num_partitions):
        q = rng.dirichlet(np.full(len(classes), alpha))
        counts = np.round(q * size).astype(np.int64)
        counts[np.argmax(q)] += size - counts.sum()
        counts = np.minimum(counts, [len(idx) for idx in by_class])  # capped at the class' size
        parts.append(np.sort(np.concatenate([rng.choice(idx, c, replace=False) for idx, c in zip(by_class, counts)])))
    return parts
