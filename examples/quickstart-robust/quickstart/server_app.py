"""The ServerApp: Flower's usual pattern with FedAvg swapped for RobustStrategy."""

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from flwr_byz.flower import RobustStrategy

from .task import build_model, test_accuracy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    model = build_model()
    # --8<-- [start:strategy]
    strategy = RobustStrategy(
        aggregation=context.run_config["aggregation"],   # e.g. "nnm+gm", "cm", "bucketing+nnm+krum"
        f=context.run_config["aggregation-f"],              # the number of Byzantine replies to withstand
        fraction_evaluate=0.0,                             # any FedAvg argument works as usual
        min_train_nodes=4,
        min_available_nodes=4,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=context.run_config["num-server-rounds"],
        train_config=ConfigRecord({"lr": context.run_config["lr"]}),  # gamma_t: pseudo-gradients use it
        evaluate_fn=lambda rnd, arrays: MetricRecord({"accuracy": evaluate(arrays)}),
    )
    # --8<-- [end:strategy]
    print(f"final accuracy {evaluate(result.arrays):.4f}")


def evaluate(arrays: ArrayRecord) -> float:
    model = build_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    return test_accuracy(model)
