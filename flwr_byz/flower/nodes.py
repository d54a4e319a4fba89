"""What a simulated node knows: its role and its device (torch is imported only to ask for the device)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flwr.app import Context

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Role:
    """Node ``partition_id`` of ``n``: the last ``f`` ids are Byzantine, the others honest.

    Honest node ``i`` holds honest partition ``i`` of ``h = n - f``; Byzantine node ``h + j`` a copy of honest
    partition ``j mod h`` (:attr:`data_partition`: the data it trains on for LF).
    """

    partition_id: int
    n: int
    f: int

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

    @property
    def data_partition(self) -> int:
        """The honest partition whose data this node holds."""
        return self.partition_id if not self.byzantine else (self.partition_id - self.h) % self.h


def device() -> torch.device:
    """CUDA when the simulation backend gave this worker a GPU, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
