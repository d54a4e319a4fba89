"""FedMedian (a Flower built-in) wrapped in OmniscientAdversary; saves what it aggregated and what the hook sent."""

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedMedian

from flwr_byz.settings import RunSettings
from flwr_byz.flat import FlatLayout
from flwr_byz.flower.paper.server_app import wait_for_nodes
from flwr_byz.flower import OmniscientAdversary
from flwr_byz.tasks import get_task

app = ServerApp()


def structure(reply) -> tuple:
    """Everything about a reply except its sender, ids, timestamps and values."""
    records = []
    for name, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            records.append((name, "ArrayRecord", tuple((k, a.dtype, tuple(a.shape)) for k, a in record.items())))
        else:
            records.append((name, type(record).__name__, tuple((k, type(v).__name__) for k, v in record.items())))
    meta = reply.metadata
    return meta.message_type, meta.group_id, meta.dst_node_id, reply.has_error(), tuple(records)


class RecordingFedMedian(FedMedian):
    """FedMedian that keeps, per round, the global model and every reply it aggregates (vector and structure)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: dict[int, dict] = {}

    def configure_train(self, server_round, arrays, config, grid):
        state = arrays.to_torch_state_dict()
        self.seen[server_round] = {"theta": FlatLayout.of(state).flatten(state), "replies": [], "structure": []}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        for reply in replies:
            state = reply.content["arrays"].to_torch_state_dict()
            self.seen[server_round]["replies"].append((reply.metadata.src_node_id, FlatLayout.of(state).flatten(state)))
            self.seen[server_round]["structure"].append((reply.metadata.src_node_id, structure(reply)))
        return super().aggregate_train(server_round, replies)


class RecordingGrid:
    """The run's Grid, keeping (message type, destination, record names) of everything sent."""

    def __init__(self, grid: Grid) -> None:
        self.grid, self.sent = grid, []

    def send_and_receive(self, messages, **kwargs):
        messages = list(messages)
        self.sent += [(m.metadata.message_type, m.metadata.dst_node_id, sorted(m.content.keys())) for m in messages]
        return self.grid.send_and_receive(messages, **kwargs)

    def __getattr__(self, name):
        return getattr(self.grid, name)


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(context.run_config)
    n = wait_for_nodes(grid)
    strategy = RecordingFedMedian(fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
    adversary = OmniscientAdversary(strategy, seed=settings.seed)
    model = get_task(settings.task).build_model()
    recording = RecordingGrid(grid)
    adversary.start(grid=recording, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=settings.rounds,
                    train_config=ConfigRecord({"lr": settings.lr}))
    torch.save({"rounds": strategy.seen, "byzantine": sorted(adversary.byzantine), "sent": recording.sent,
                "metrics": {k: dict(v) for k, v in adversary.train_metrics.items()}},
               Path(settings.results_dir) / "probe.pt")
