"""The hook takes what it needs from the run config without plumbing in the user's server code: the seed and
JUMP's loss metric (reported by the nodes with their roles, or the run's overrides), and federated evaluation
reaches every node; in one process, with the scikit-learn test app `sklearnapp` and a loopback Grid."""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from conftest import ROOT
from flower_helpers import LoopbackGrid, simulation_contexts
from flwr_byz.dsgd import reply_order
from flwr_byz.flower import DefendedRule, OmniscientAdversary

sys.path.insert(0, str(ROOT / "tests/apps/sklearnapp"))
from sklearnapp import client_app  # noqa: E402
from sklearnapp.task import create_model, get_params  # noqa: E402

N = 5


def run_config(**overrides) -> dict:
    return {"penalty": "l2", "num-server-rounds": 1, "local-iterations": 1, **overrides}


class OrderRecorder(FedAvg):
    """FedAvg that records the node ids of the train replies in the order it receives them."""

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.order = [r.metadata.src_node_id for r in replies]
        return super().aggregate_train(server_round, replies)


class RunGrid(LoopbackGrid):
    """A loopback Grid that knows the run's ``--run-config`` overrides, as Flower's grids do."""

    def __init__(self, app, contexts, overrides: dict) -> None:
        super().__init__(app, contexts)
        self.overrides = overrides

    @property
    def run(self):
        return SimpleNamespace(override_config=self.overrides)


def one_round(config: dict, grid_cls=LoopbackGrid, **adversary_kwargs):
    contexts = simulation_contexts(config, N)
    grid = grid_cls(client_app.app, contexts, config) if grid_cls is RunGrid else grid_cls(client_app.app, contexts)
    strategy = OrderRecorder(fraction_evaluate=1.0, min_train_nodes=N, min_available_nodes=N)
    adversary = OmniscientAdversary(strategy, defended=DefendedRule("mean", 0), **adversary_kwargs)  # FedAvg's
    arrays = ArrayRecord(get_params(create_model("l2", 1)))
    messages = adversary.configure_train(1, arrays, ConfigRecord(), grid)
    adversary.aggregate_train(1, grid.send_and_receive(messages))
    return adversary, strategy, grid, arrays


def test_the_run_configs_seed_reaches_the_hook_and_orders_the_replies():
    """No seed in the server code: the nodes' run-config seed drives the reply shuffle (the same order as an
    explicit seed, another order for another seed)."""
    attacked = {"attack": "sf", "num-byzantine": 1}
    orders = {}
    for seed in (7, 8):
        adversary, strategy, _, _ = one_round(run_config(seed=seed, **attacked))
        assert adversary.seed == seed
        orders[seed] = strategy.order
        _, explicit, _, _ = one_round(run_config(seed=0, **attacked), seed=seed)  # the argument wins
        assert explicit.order == strategy.order
    assert orders[7] != orders[8]
    ranked = [1, 2, 3, 4, 5]  # node ids in rank order: honest 1..4, then the Byzantine node 5
    assert orders[7] == [ranked[i] for i in reply_order(random.Random(7), N)]


def test_an_honest_runs_seed_comes_from_the_run_overrides():
    """Without Byzantine nodes the nodes answer the role query with no role; the hook reads the seed from the run's
    --run-config overrides (what `flwr-byz audit` passes), else uses 0."""
    adversary, _, _, _ = one_round(run_config(seed=5), RunGrid)
    assert adversary.seed == 5
    adversary, _, _, _ = one_round(run_config(seed=5))  # a grid without run details
    assert adversary.seed == 0


def test_the_loss_key_comes_from_the_run_config():
    adversary, _, _, _ = one_round(run_config(attack="jump", **{"num-byzantine": 1, "loss-key": "test_logloss"}))
    assert adversary.loss_key == "test_logloss"
    adversary, _, _, _ = one_round(run_config(attack="jump", **{"num-byzantine": 1}), loss_key="accuracy")
    assert adversary.loss_key == "accuracy"


def test_federated_evaluation_reaches_the_byzantine_nodes_too():
    """Every run of an audit is evaluated on the same nodes' data: the Byzantine node evaluates honestly."""
    adversary, _, grid, arrays = one_round(run_config(seed=1, attack="sf", **{"num-byzantine": 1}))
    messages = list(adversary.configure_evaluate(1, arrays, ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3, 4, 5]
    replies = grid.send_and_receive(messages)
    assert not any(r.has_error() for r in replies)
    metrics = adversary.aggregate_evaluate(1, replies)
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0 and np.isfinite(float(metrics["test_logloss"]))
