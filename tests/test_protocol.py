"""The adversary protocol end to end in one process: the real OmniscientAdversary, strategies and
ClientApps, messages delivered by a loopback Grid (the `flwr run` versions are in test_flower_e2e)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from conftest import ROOT
from flower_helpers import LoopbackGrid, simulation_contexts
from flwr_byz.flower import byzantine
from flwr_byz.flower.paper.client_app import app as flwr_byz_app
from flwr_byz.flower.protocol import ATTACK_TYPE, ECHO_RECORD, HONEST_RECORD, AttackRequest, NodeRole
from flwr_byz.flower import OmniscientAdversary, RobustStrategy

sys.path.insert(0, str(ROOT / "tests/apps/probe"))
from probe.server_app import structure  # noqa: E402 - what a strategy sees of a reply, as the flwr-run probe records it

D = 6
THETA = np.linspace(-1.0, 1.0, D).astype(np.float32)


def honest_gradient(node: int) -> np.ndarray:
    return np.random.default_rng(node).normal(1.0, 0.5, D).astype(np.float32)


def custom_app(lr_key: str = "step", weight_key: str = "n-samples") -> ClientApp:
    """A user's ClientApp with its own config and metric keys, made Byzantine-capable with
    ``byzantine(app)``. Honest node i sends ``theta - step * g_i``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        theta = msg.content["arrays"]["w"].numpy()
        step = msg.content["config"][lr_key]
        g = honest_gradient(int(context.node_config["partition-id"]))
        return Message(RecordDict({
            "arrays": ArrayRecord({"w": Array(theta - np.float32(step) * g)}),
            "metrics": MetricRecord({weight_key: 5 + int(context.node_config["partition-id"]), "loss": 0.25}),
        }), reply_to=msg)

    return byzantine(app)


class Recording(RobustStrategy):
    """RobustStrategy that keeps every reply it aggregates."""

    def aggregate_train(self, server_round, replies):
        self.seen = list(replies)
        return super().aggregate_train(server_round, replies)


def one_round(app: ClientApp, strategy: RobustStrategy, run_config: dict, n: int, config: dict, rnd: int = 1):
    grid = LoopbackGrid(app, simulation_contexts(run_config, n))
    adversary = OmniscientAdversary(strategy, seed=3)
    messages = adversary.configure_train(rnd, ArrayRecord({"w": Array(THETA)}), ConfigRecord(config), grid)
    arrays, metrics = adversary.aggregate_train(rnd, grid.send_and_receive(messages))
    return grid, adversary, arrays, metrics


def run_config(**overrides) -> dict:
    return {"task": "mnist-logreg", "attack": "sf", "num-byzantine": 2, **overrides}


def test_hook_honours_the_strategy_keys_and_sends_sf_exactly():
    """lr_key="step", weighted_by_key="n-samples": the hook screens with the strategy's key and takes
    gamma_t from its key, so SF's reply is exactly theta + gamma * gbar (pseudo-gradients in float32)."""
    strategy = Recording(aggregation="cm", f=2, lr_key="step", weighted_by_key="n-samples", min_train_nodes=7,
                         min_available_nodes=7, fraction_evaluate=0.0)
    grid, adversary, _, metrics = one_round(custom_app(), strategy, run_config(), 7, {"step": 0.5})
    by_node = {r.metadata.src_node_id: r.content["arrays"]["w"].numpy() for r in strategy.seen}
    assert len(by_node) == 7 and adversary.byzantine == {6, 7}
    gbar = (torch.tensor(THETA) - torch.stack([torch.tensor(by_node[i]) for i in range(1, 6)])) / 0.5
    expected = torch.tensor(THETA) + 0.5 * gbar.mean(0)
    for node in (6, 7):
        torch.testing.assert_close(torch.tensor(by_node[node]), expected, rtol=0, atol=0)
    assert metrics["robust-received"] == 7 and metrics["robust-excluded"] == 0


def test_byzantine_replies_are_indistinguishable_from_honest_ones():
    strategy = Recording(aggregation="cm", f=2, lr_key="step", weighted_by_key="n-samples", min_train_nodes=7,
                         min_available_nodes=7, fraction_evaluate=0.0)
    one_round(custom_app(), strategy, run_config(), 7, {"step": 0.5})
    shapes = {structure(r) for r in strategy.seen}
    assert len(shapes) == 1, shapes
    message_type, _, _, _, records = shapes.pop()
    assert message_type == "train" and [name for name, *_ in records] == ["arrays", "metrics"]
    assert records[1] == ("metrics", "MetricRecord", (("n-samples", "int"), ("loss", "float")))


@pytest.mark.parametrize("attack, shared", [("sf", True), ("alie", True), ("gaussian", False)])
def test_shared_attacks_are_computed_once_per_round(attack, shared):
    strategy = Recording(aggregation="cm", f=3, lr_key="step", weighted_by_key="n-samples", min_train_nodes=9,
                         min_available_nodes=9, fraction_evaluate=0.0)
    grid, *_ = one_round(custom_app(), strategy, run_config(attack=attack, **{"num-byzantine": 3}), 9, {"step": 0.5})
    requests = [m for m in grid.sent if m.metadata.message_type == ATTACK_TYPE]
    computing = [m for m in requests if HONEST_RECORD in m.content.array_records]
    echoing = [m for m in requests if ECHO_RECORD in m.content.array_records]
    assert (len(computing), len(echoing)) == ((1, 2) if shared else (3, 0))
    byzantine = [r.content["arrays"]["w"].numpy() for r in strategy.seen if r.metadata.src_node_id > 6]
    assert len(byzantine) == 3
    identical = all(np.array_equal(byzantine[0], b) for b in byzantine[1:])
    assert identical == shared


def test_a_failing_byzantine_node_stops_the_round_with_its_error():
    def broken(msg, context):
        raise RuntimeError("attack exploded on purpose")

    app = custom_app()
    app._registered_funcs["train.attack"] = broken  # noqa: SLF001 - replace the registered attack handler
    strategy = RobustStrategy(aggregation="cm", f=2, lr_key="step", weighted_by_key="n-samples", min_train_nodes=7,
                              min_available_nodes=7, fraction_evaluate=0.0)
    with pytest.raises(RuntimeError, match=r"Byzantine node 6 failed to attack: .*attack exploded on purpose"):
        one_round(app, strategy, run_config(), 7, {"step": 0.5})


def test_bucketing_order_seen_by_the_attack_is_the_defence_order():
    """The hook tells the attack in which order the defence sees the rows (bucketing depends on it):
    the attack's stack [honest, a x f] permuted by that order equals the pseudo-gradients the
    strategy aggregates, and the rule of the round is the same pure function of (seed, round)."""
    strategy = Recording(aggregation="bucketing+cm", f=2, lr_key="step", weighted_by_key="n-samples",
                         min_train_nodes=9, min_available_nodes=9, fraction_evaluate=0.0)
    grid, *_ = one_round(custom_app(), strategy, run_config(), 9, {"step": 0.5}, rnd=4)
    request = AttackRequest.from_message(next(m for m in grid.sent if HONEST_RECORD in m.content.array_records))
    seen = torch.stack([(torch.tensor(THETA) - torch.tensor(r.content["arrays"]["w"].numpy())) / 0.5
                        for r in strategy.seen])
    a = seen[[i for i, r in enumerate(strategy.seen) if r.metadata.src_node_id > 7][0]]
    stack = torch.cat([request.honest, a.expand(2, D)])
    torch.testing.assert_close(stack[request.order], seen, rtol=1e-6, atol=1e-6)
    assert request.server_round == 4 and request.aggregation == "bucketing+cm"


def test_the_real_client_app_answers_roles_with_its_attack_sharing():
    contexts = simulation_contexts(run_config(attack="jump"), 5)
    grid = LoopbackGrid(flwr_byz_app, contexts)
    adversary = OmniscientAdversary(RobustStrategy(aggregation="cm", f=2))
    assert adversary.discover_roles(grid) == {4, 5}
    assert adversary.roles[1] == NodeRole(False, 0, False, "jump")
    assert adversary.roles[5] == NodeRole(True, 4, True, "jump")
