"""sklearnapp: the ServerApp, FedAvg with federated evaluation only, plus the adversary hook (flwr-byz)."""

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flwr_byz.flower import OmniscientAdversary
from sklearnapp.task import create_model, get_params

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    model = create_model(str(context.run_config["penalty"]), int(context.run_config["local-iterations"]))
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0)
    strategy = OmniscientAdversary(strategy)  # flwr-byz: the adversary hook
    strategy.start(grid=grid, initial_arrays=ArrayRecord(get_params(model)),
                   num_rounds=int(context.run_config["num-server-rounds"]))
