"""An ordinary Flower client: local SGD epochs, returns the full weights."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .task import build_model, load_partition

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_partition(context.node_config["partition-id"], context.node_config["num-partitions"])
    optimizer = torch.optim.SGD(model.parameters(), lr=msg.content["config"]["lr"])
    model.train()
    for _ in range(context.run_config["local-epochs"]):
        for batch in torch.randperm(len(x)).split(32)[:-1]:  # drop the last, possibly tiny, batch
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    metrics = MetricRecord({"train-loss": loss.item(), "num-examples": len(x)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
