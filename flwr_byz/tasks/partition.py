"""Split a dataset among honest nodes: IID or label-Dirichlet heterogeneity."""

from __future__ import annotations

import warnings

import numpy as np
from torch import Tensor


def partition(
    labels: np.ndarray | Tensor,
    num_partitions: int,
    alpha: float | None,
    seed: int,
    min_partition_size: int | None = None,
) -> list[np.ndarray]:
    """Sorted index arrays of ``num_partitions`` disjoint parts covering all examples.

    ``alpha=None``: IID, a seeded permutation cut into near-equal parts (sizes differ
    by at most one). Otherwise Hsu et al. (2019): for each class ``k`` a share vector
    ``p_k ~ Dir(alpha * 1)`` over partitions splits that class' examples (flwr_datasets'
    ``DirichletPartitioner``); small ``alpha`` means strong label skew. Draws are
    repeated (at most 10 times, then ``ValueError``) until every part holds at least
    ``min_partition_size`` examples, by default ``min(10, n // num_partitions)``.
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
    if alpha is None:
        perm = np.random.default_rng(seed).permutation(n)
        return [np.sort(part) for part in np.array_split(perm, num_partitions)]
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
