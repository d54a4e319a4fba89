"""The honest D-SGD worker as a Flower ClientApp handler."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from torch import Tensor

from flwr_byz.settings import RunSettings
from flwr_byz.flower.records import to_record
from flwr_byz.tasks import Task, stepped, worker_step
from flwr_byz.flower.nodes import Role, device, local_data
from flwr_byz.flower.records import instruction, load_state, save_state


def momentum_step(
    context: Context, settings: RunSettings, task: Task, x: Tensor, y: Tensor, arrays: ArrayRecord, round_: int,
    gamma: float, node: int, state_key: str = "momentum",
) -> tuple[dict[str, Tensor], float, int]:
    """Run the honest pipeline on ``(x, y)`` from the global model ``arrays`` in round ``round_``.

    Returns the model state to send, ``theta - gamma_t * m_t`` on trainable entries
    and the forward pass's BatchNorm statistics on the others, the batch loss and
    the batch size. The momentum ``m_t`` persists in ``context.state[state_key]``.
    """
    model = task.build_model().to(device())
    theta = {k: v.to(device()) for k, v in arrays.to_torch_state_dict().items()}
    model.load_state_dict(theta)
    previous = load_state(context.state, state_key)
    momentum = previous["m"].to(device()) if previous else None
    result = worker_step(task, model, x, y, momentum, settings.worker(), settings.seed, node, round_)
    save_state(context.state, state_key, {"m": result.momentum})
    return stepped(model, theta, result.momentum, gamma), result.loss, result.batch_size


def train_honest(msg: Message, context: Context) -> Message:
    """Reply to a train instruction with the model after one honest step."""
    settings = RunSettings.from_run_config(context.run_config)
    role = Role.of(context, settings)
    task, x, y = local_data(settings, role.partition_id, role.h)
    arrays, config = instruction(msg)
    state, loss, batch = momentum_step(context, settings, task, x, y, arrays, int(config["server-round"]),
                                       float(config.get("lr", 1.0)), node=role.partition_id)
    content = RecordDict({
        "arrays": to_record(state),
        "metrics": MetricRecord({"num-examples": batch, "train-loss": loss}),
    })
    return Message(content=content, reply_to=msg)
