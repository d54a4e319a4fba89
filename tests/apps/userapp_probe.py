"""userapp's ServerApp with a recording FedMedian: what the strategy aggregated, per round, for test_audit.

test_audit copies it into a copy of userapp as ``userapp/probe_server.py``; it saves
``$USERAPP_PROBE_DIR/<attack>_f<f>_s<seed>.pt``.
"""

import os
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedMedian

from flwr_byz.flower.paper.server_app import wait_for_nodes
from flwr_byz.flower import OmniscientAdversary

from .server_app import global_evaluate
from .task import Net

app = ServerApp()


def flat(record: ArrayRecord) -> torch.Tensor:
    return torch.cat([torch.as_tensor(a.numpy()).reshape(-1) for a in record.values()])


class RecordingFedMedian(FedMedian):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: dict[int, dict] = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.seen[server_round] = {"theta": flat(arrays), "replies": {}}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.seen[server_round]["replies"] = {r.metadata.src_node_id: flat(r.content["arrays"]) for r in replies}
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.seen[server_round]["aggregate"] = arrays.to_torch_state_dict()
        return arrays, metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    torch.manual_seed(int(config["seed"]))
    n = wait_for_nodes(grid)
    strategy = RecordingFedMedian(fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
    adversary = OmniscientAdversary(strategy, seed=int(config["seed"]))
    adversary.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
                    train_config=ConfigRecord({"lr": float(config["lr"])}),
                    num_rounds=int(config["num-server-rounds"]), evaluate_fn=global_evaluate)
    name = f"{config['attack']}_f{config['num-byzantine']}_s{config['seed']}.pt"
    torch.save({"rounds": strategy.seen, "byzantine": sorted(adversary.byzantine), "nodes": n,
                "metrics": {k: dict(v) for k, v in adversary.train_metrics.items()},
                "ranks": {node: role.rank for node, role in adversary.roles.items() if role is not None}},
               Path(os.environ["USERAPP_PROBE_DIR"]) / name)
