"""userapp: the ServerApp (flwr new's PyTorch template), its strategy inside flwr_byz's adversary hook."""

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian

from flwr_byz.flower import OmniscientAdversary, RobustStrategy

from .task import Net, load_root, load_test, test, train

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    torch.manual_seed(int(config["seed"]))
    n = wait_for_nodes(grid)
    common = {"fraction_evaluate": 0.0, "min_train_nodes": n, "min_available_nodes": n}
    strategy = {
        "fedavg": lambda: FedAvg(**common),
        "fedmedian": lambda: FedMedian(**common),
        "robust": lambda: RobustStrategy(aggregation=str(config["aggregation"]), f=int(config["robust-f"]),
                                         root_train=root_trainer(config), **common),
    }[str(config["strategy"])]()
    strategy = OmniscientAdversary(strategy)  # flwr-byz: the adversary hook
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net().state_dict()),
        train_config=ConfigRecord({"lr": float(config["lr"])}),
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=global_evaluate,
    )
    print(f"final accuracy {global_evaluate(0, result.arrays)['accuracy']:.4f}")


def wait_for_nodes(grid: Grid, timeout: float = 120.0) -> int:
    """The number of connected nodes, once it has not changed for a second (every node trains each round)."""
    start, count, stable_since = time.time(), -1, time.time()
    while time.time() - start < timeout:
        now = len(list(grid.get_node_ids()))
        if now != count:
            count, stable_since = now, time.time()
        elif count > 0 and time.time() - stable_since >= 1.0:
            return count
        time.sleep(0.2)
    raise RuntimeError(f"no stable set of nodes after {timeout} s (last count {count})")


def root_trainer(config):
    """FLTrust's server update (used by rules that need one): the global model after the app's own training on
    the server's root set (100 class-balanced examples the nodes do not hold), with the round's train config."""
    root = load_root(int(config["root-examples"]), int(config["train-examples"]), int(config["batch-size"]),
                     int(config["seed"]))

    def root_train(arrays: ArrayRecord, train_config: ConfigRecord) -> ArrayRecord:
        model = Net()
        model.load_state_dict(arrays.to_torch_state_dict())
        train(model, root, int(config["root-epochs"]), float(train_config["lr"]))
        return ArrayRecord(model.state_dict())

    return root_train


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Centralised evaluation on 1000 MNIST test images."""
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = test(model, load_test())
    return MetricRecord({"accuracy": accuracy, "loss": loss})
