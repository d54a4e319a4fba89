"""Learning tasks (model, data, loss, paper hyper-parameters), partitioning and the honest worker step.

Pure torch + numpy + flwr_datasets; no Flower import.
"""

from flwr_byz.tasks.datasets import DatasetNotFoundError
from flwr_byz.tasks.honest_loss import LossSampling, SampleLoss, honest_losses, loss_draws
from flwr_byz.tasks.partition import partition
from flwr_byz.tasks.task import TASKS, Task, flip_labels, get_task, prepare
from flwr_byz.tasks.worker import (WorkerConfig, WorkerStep, lr_at, sample_batch, seeded_generator, stepped,
                                   worker_step)

__all__ = [
    "TASKS",
    "DatasetNotFoundError",
    "LossSampling",
    "SampleLoss",
    "Task",
    "WorkerConfig",
    "WorkerStep",
    "flip_labels",
    "get_task",
    "honest_losses",
    "loss_draws",
    "lr_at",
    "partition",
    "prepare",
    "sample_batch",
    "seeded_generator",
    "stepped",
    "worker_step",
]
