"""The honest Robust D-SGD worker of the paper app as a Flower ClientApp (paper, Table 2): one
:func:`~flwr_byz.tasks.worker_step` on the node's partition, momentum kept in ``context.state``."""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor

from flwr_byz.flower.byzantine import labels
from flwr_byz.flower.nodes import Role, device
from flwr_byz.flower.records import instruction, load_state, save_state, to_record
from flwr_byz.settings import RunSettings
from flwr_byz.tasks import Task, stepped, worker_step
from flwr_byz.node_data import honest_partitions

app = ClientApp()


@lru_cache(maxsize=32)
def local_data(settings: RunSettings, index: int, num_honest: int) -> tuple[Task, Tensor, Tensor]:
    """Task and training data of honest partition ``index`` on this worker's device."""
    task, x, y, parts = honest_partitions(settings, num_honest)
    idx = torch.as_tensor(parts[index])
    return task, x[idx].to(device()), y[idx].to(device())


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Reply to a train instruction with the model after one honest step from the global model: ``theta - gamma_t
    m_t`` on trainable entries, the forward pass's BatchNorm statistics on the others (labels through
    :func:`~flwr_byz.flower.labels`, so a Byzantine node can run this step on flipped labels for LF)."""
    settings = RunSettings.from_run_config(context.run_config)
    role = Role.at(context, settings.num_byzantine)
    task, x, y = local_data(settings, role.data_partition, role.h)
    arrays, config = instruction(msg)
    gamma = float(config.get("lr", 1.0))
    model = task.build_model().to(device())
    theta = {k: v.to(device()) for k, v in arrays.to_torch_state_dict().items()}
    model.load_state_dict(theta)
    previous = load_state(context.state, "momentum")
    result = worker_step(task, model, x, labels(y), previous["m"].to(device()) if previous else None,
                         settings.worker(), settings.seed, role.partition_id, int(config["server-round"]))
    save_state(context.state, "momentum", {"m": result.momentum})
    content = RecordDict({
        "arrays": to_record(stepped(model, theta, result.momentum, gamma)),
        "metrics": MetricRecord({"num-examples": result.batch_size, "train-loss": result.loss}),
    })
    return Message(content=content, reply_to=msg)
