"""The paper app's ClientApp: honest Robust D-SGD workers (:mod:`flwr_byz.flower.paper.honest`) made
Byzantine-capable by :func:`flwr_byz.flower.byzantine`, the one Byzantine client, with what a simulated node
holds: the run's honest data, so a Byzantine node scores JUMP's candidates itself (local oracle) and trains on
flipped labels ``9 - y`` for LF."""

from __future__ import annotations

from flwr.app import Context

from flwr_byz.attacks.base import HonestLoss
from flwr_byz.flower.byzantine import byzantine
from flwr_byz.flower.nodes import Role, device
from flwr_byz.flower.paper.honest import app as honest_app
from flwr_byz.settings import RunSettings
from flwr_byz.tasks import flip_labels
from flwr_byz.node_data import honest_loss_oracle


def local_oracle(context: Context, server_round: int) -> tuple[HonestLoss, HonestLoss | None]:
    """JUMP's honest loss (and its screening estimate) of round ``server_round`` on the run's honest partitions."""
    settings = RunSettings.from_run_config(context.run_config)
    return honest_loss_oracle(settings, Role.at(context, settings.num_byzantine).h, server_round, device())


app = byzantine(honest_app, label_transform=flip_labels, oracle=local_oracle)
