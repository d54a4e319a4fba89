"""userapp: the ClientApp (flwr new's PyTorch template), plus the one line that makes it Byzantine-capable."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_byz.flower import byzantine

from .task import Net, load_data, test, train

app = ClientApp()


def node_data(context: Context, round_: int):
    config = context.run_config
    return load_data(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
                     int(config["train-examples"]), int(config["batch-size"]), int(config["seed"]) * 1000 + round_)


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    trainloader, _ = node_data(context, int(msg.content["config"].get("server-round", 0)))
    torch.manual_seed(int(context.run_config["seed"]))
    train_loss = train(model, trainloader, int(context.run_config["local-epochs"]), float(msg.content["config"]["lr"]))
    metrics = {"train_loss": train_loss, "num-examples": len(trainloader.dataset)}
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}),
                   reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, valloader = node_data(context, 0)
    eval_loss, eval_acc = test(model, valloader)
    metrics = {"eval_loss": eval_loss, "eval_acc": eval_acc, "num-examples": len(valloader.dataset)}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


app = byzantine(app, label_transform=lambda y: 9 - y)  # flwr-byz: this node may be Byzantine
