"""What a simulated node knows: its role, its data, its device."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from flwr.app import Context
from torch import Tensor

from flwr_byz.settings import RunSettings
from flwr_byz.tasks import Task
from flwr_byz.tasks.nodes import honest_partitions


@dataclass(frozen=True)
class Role:
    """Node ``partition_id`` of ``n``: the last ``f`` ids are Byzantine, the others honest.

    Honest node ``i`` holds honest partition ``i`` of ``h = n - f``.
    """

    partition_id: int
    n: int
    f: int

    @classmethod
    def of(cls, context: Context, settings: RunSettings) -> Role:
        return cls.at(context, settings.num_byzantine)

    @classmethod
    def at(cls, context: Context, f: int) -> Role:
        """This node's role in a run with ``f`` Byzantine nodes (partition id and count from the node config)."""
        try:
            pid, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
        except KeyError as missing:
            raise ValueError(f"Byzantine roles need the node config's partition-id and num-partitions (a Flower "
                             f"simulation sets them; a deployed SuperNode needs --node-config): {missing} missing"
                             ) from None
        if not 0 <= f < n:
            raise ValueError(f"num-byzantine={f} needs 0 <= num-byzantine < the number of nodes ({n})")
        return cls(pid, n, f)

    @property
    def h(self) -> int:
        return self.n - self.f

    @property
    def byzantine(self) -> bool:
        return self.partition_id >= self.h


def device() -> torch.device:
    """CUDA when the simulation backend gave this worker a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=32)
def local_data(settings: RunSettings, index: int, num_honest: int) -> tuple[Task, Tensor, Tensor]:
    """Task and training data of honest partition ``index`` on this worker's device."""
    task, x, y, parts = honest_partitions(settings, num_honest)
    idx = torch.as_tensor(parts[index])
    return task, x[idx].to(device()), y[idx].to(device())
