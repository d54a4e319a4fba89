"""byzantine(app): a user's own ClientApp made Byzantine-capable, in one process (the real hook, strategies
and the test app `userapp`, messages delivered by a loopback Grid; `flwr run` versions in test_audit)."""

from __future__ import annotations

import logging
import math
import re
import sys
import traceback
from logging import ERROR

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAvg, FedMedian, Krum, MultiKrum

from conftest import ROOT
from flower_helpers import LoopbackGrid, simulation_contexts
from flwr_byz.flower import byzantine
from flwr_byz.flower.byzantine import flipping
from flwr_byz.flower.protocol import SCORE_TYPE, NodeRole, role_query
from flwr_byz.flower import OmniscientAdversary
from flwr_byz.flower.adversary import tolerated_f, DefendedRule

sys.path.insert(0, str(ROOT / "examples/audited-pytorch-app"))
from userapp import client_app as user  # noqa: E402
from userapp.task import Net, load_data  # noqa: E402
from userapp.task import test as user_test  # noqa: E402 - not a pytest test

N = 5
GAMMA = 0.05


def config(**overrides) -> dict:
    return {"num-server-rounds": 1, "strategy": "fedmedian", "aggregation": "nnm+cm", "robust-f": 2,
            "local-epochs": 1, "lr": GAMMA, "batch-size": 32, "train-examples": 600, "seed": 0, **overrides}


def global_model() -> ArrayRecord:
    torch.manual_seed(0)
    return ArrayRecord(Net().state_dict())


def instruction(kind: str, node: int, arrays: ArrayRecord, server_round: int = 1) -> Message:
    msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"lr": GAMMA, "server-round": server_round})}),
                  dst_node_id=node, message_type=kind)
    msg.metadata.__dict__["_message_id"] = f"{kind}-{node}"
    return msg


def flat(record: ArrayRecord) -> torch.Tensor:
    return torch.cat([torch.as_tensor(a.numpy()).reshape(-1) for a in record.values()])


def everyone(cls=FedAvg, **kwargs):
    """A Flower strategy sampling all N nodes, without federated evaluation."""
    return cls(fraction_evaluate=0.0, min_train_nodes=N, min_available_nodes=N, **kwargs)


def trained(node: int, theta: ArrayRecord, contexts: dict) -> torch.Tensor:
    """The user's own train handler's model on ``node``, flat."""
    return flat(user.app.app(instruction("train", node, theta), contexts[node]).content["arrays"])


def one_round(strategy, run_config: dict, n: int = N, **adversary_kwargs):
    grid = LoopbackGrid(user.app, simulation_contexts(run_config, n))
    adversary = OmniscientAdversary(strategy, seed=1, **adversary_kwargs)
    arrays = global_model()
    messages = adversary.configure_train(1, arrays, ConfigRecord({"lr": GAMMA}), grid)
    new, metrics = adversary.aggregate_train(1, grid.send_and_receive(messages))
    return grid, adversary, arrays, new, metrics


def test_honest_messages_pass_through_bit_for_bit():
    """On an honest node (with and without Byzantine nodes in the run) the wrapped app's train and evaluate
    replies are byte-identical to the user's app's, and the user's own query actions and mods still run."""
    inner, arrays = user.app.app, global_model()
    for run_config in (config(), config(attack="sf", **{"num-byzantine": 2})):
        for kind in ("train", "evaluate"):
            replies = []
            for app in (inner, user.app):
                context = simulation_contexts(run_config, N)[2]
                replies.append(app(instruction(kind, 2, arrays), context))
            mine, theirs = replies
            assert list(mine.content.keys()) == list(theirs.content.keys())
            for name, record in mine.content.items():
                if isinstance(record, ArrayRecord):
                    assert [(k, a.numpy().tobytes()) for k, a in record.items()] == \
                        [(k, a.numpy().tobytes()) for k, a in theirs.content[name].items()]
                else:
                    assert dict(record) == dict(theirs.content[name])

    def tag(msg, context, call):  # a user's mod: must still wrap the user's handlers
        reply = call(msg, context)
        reply.content["metrics"]["tagged"] = 1
        return reply

    custom = ClientApp(mods=[tag])
    custom.query("ping")(lambda msg, context: Message(RecordDict({"metrics": MetricRecord({"pong": 7})}),
                                                      reply_to=msg))
    reply = byzantine(custom)(instruction("query.ping", 1, arrays), simulation_contexts(config(), N)[1])
    assert dict(reply.content["metrics"]) == {"pong": 7, "tagged": 1}


def test_roles_come_from_the_run_config_and_byzantine_nodes_refuse_plain_train_but_evaluate_honestly():
    """A plain train message to a Byzantine node raises (its strategy is not inside the hook); a plain evaluate
    message runs the user's evaluate handler, as on an honest node (federated evaluation reaches every node)."""
    contexts = simulation_contexts(config(attack="alie", **{"num-byzantine": 2}), N)
    grid = LoopbackGrid(user.app, contexts)
    roles = {r.metadata.src_node_id: NodeRole.from_reply(r) for r in grid.send_and_receive(
        [role_query(node) for node in contexts])}
    assert roles[1] == NodeRole(False, 0, False, "alie", "", "honest-nodes")
    assert roles[5] == NodeRole(True, 4, True, "alie", "", "honest-nodes")
    assert {node for node, role in roles.items() if role.byzantine} == {4, 5}
    with pytest.raises(ValueError, match="wrap the ServerApp's strategy in flwr_byz.flower.OmniscientAdversary"):
        user.app(instruction("train", 5, global_model()), contexts[5])
    evaluated = user.app(instruction("evaluate", 5, global_model()), contexts[5])
    assert dict(evaluated.content["metrics"]) == dict(
        user.app.app(instruction("evaluate", 5, global_model()), contexts[5]).content["metrics"])


def test_sf_reply_is_computed_from_the_honest_replies_of_the_round():
    grid, adversary, theta, new, metrics = one_round(everyone(), config(attack="sf", **{"num-byzantine": 1}))
    honest = [r for r in grid.sent if r.metadata.message_type == "train"]
    assert sorted(m.metadata.dst_node_id for m in honest) == [1, 2, 3, 4]
    contexts = simulation_contexts(config(), N)
    theta_i = [trained(i, theta, contexts) for i in range(1, 5)]
    gbar = torch.stack([(flat(theta) - t) / GAMMA for t in theta_i]).mean(0)
    byzantine_model = flat(theta) + GAMMA * gbar  # SF: a = -gbar
    expected = (torch.stack(theta_i).sum(0) + byzantine_model) / N  # FedAvg, equal num-examples
    torch.testing.assert_close(flat(new), expected, rtol=1e-5, atol=1e-6)
    assert "attack-seconds" in metrics


def test_jump_is_scored_with_the_users_evaluate_handler_on_the_honest_nodes():
    """The hook runs JUMP with the EvaluateOracle: its predicted loss is the num-examples-weighted mean of the
    user's eval_loss on the honest nodes' data at the model FedMedian then builds, which the Byzantine nodes sent."""
    grid, adversary, theta, new, metrics = one_round(
        everyone(FedMedian), config(attack="jump", **{"num-byzantine": 2}))
    scored = [m for m in grid.sent if m.metadata.message_type == SCORE_TYPE]
    assert {m.metadata.dst_node_id for m in scored} == {1, 2, 3} and metrics["oracle-calls"] == len(scored) / 3
    model = Net()
    model.load_state_dict(new.to_torch_state_dict())
    losses, weights = [], []
    for pid in range(3):
        _, val = load_data(pid, N, 600, 32, 0)
        losses.append(user_test(model, val)[0])
        weights.append(len(val.dataset))
    assert metrics["jump-loss"] == pytest.approx(np.average(losses, weights=weights), rel=1e-4)
    attack_messages = [m for m in grid.sent if m.metadata.message_type == "train.attack"]
    assert sorted(m.metadata.dst_node_id for m in attack_messages) == [4, 5]
    assert all("echo" in m.content for m in attack_messages)  # the hook's model, sent by the Byzantine nodes


def test_lf_trains_the_users_handler_on_transformed_labels():
    grid, adversary, theta, new, metrics = one_round(everyone(), config(attack="lf", **{"num-byzantine": 1}))
    contexts = simulation_contexts(config(), N)
    honest = [trained(i, theta, contexts) for i in range(1, 5)]
    with flipping(lambda y: 9 - y):
        flipped = trained(5, theta, contexts)
    assert not torch.allclose(flipped, trained(5, theta, contexts))
    torch.testing.assert_close(flat(new), (torch.stack(honest).sum(0) + flipped) / N, rtol=1e-5, atol=1e-6)


def test_lf_needs_a_label_transform_and_its_use():
    def plain_train(msg, context):
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    app = ClientApp()
    app.train()(plain_train)
    contexts = simulation_contexts(config(attack="lf", **{"num-byzantine": 1}), N)
    grid = LoopbackGrid(byzantine(app), contexts)
    with pytest.raises(RuntimeError, match=r"label_transform=lambda y"):
        OmniscientAdversary(FedAvg()).discover_roles(grid)
    grid = LoopbackGrid(byzantine(app, label_transform=lambda y: 9 - y), contexts)
    adversary = OmniscientAdversary(everyone())
    messages = adversary.configure_train(1, global_model(), ConfigRecord({"lr": GAMMA}), grid)
    with pytest.raises(RuntimeError, match=r"never called flwr_byz.flower.labels"):
        adversary.aggregate_train(1, grid.send_and_receive(messages))


def test_bad_input_fails_at_once_naming_the_fix():
    contexts = simulation_contexts(config(attack="sf", **{"num-byzantine": 2}), N)
    unwrapped = LoopbackGrid(user.app.app, contexts)
    with pytest.raises(RuntimeError, match=r"app = flwr_byz.flower.byzantine\(app\)"):
        OmniscientAdversary(FedMedian()).discover_roles(unwrapped)
    krum = OmniscientAdversary(Krum(num_malicious_nodes=1))
    with pytest.raises(ValueError, match="2 Byzantine nodes of 5, but Krum .* tolerates at most 1: lower num-byz"):
        krum.discover_roles(LoopbackGrid(user.app, contexts))
    for bad, match in (({"attack": "sf-typo"}, "unknown attack 'sf-typo'"),
                       ({"attack": "sf", "num-byzantine": 5}, r"num-byzantine=5 needs 0 <= num-byzantine < .* \(5\)"),
                       ({"num-byzantine": "2"}, "num-byzantine=.2.: expected int"),
                       ({"attack": "sf"}, "attack='sf' with num-byzantine=0 attacks nobody: set num-byzantine")):
        grid = LoopbackGrid(user.app, simulation_contexts(config(**bad), N))
        with pytest.raises(RuntimeError, match=match):
            OmniscientAdversary(FedMedian()).discover_roles(grid)


class JoiningGrid(LoopbackGrid):
    """A loopback Grid whose nodes join in two steps: ``first`` nodes until ``join()``."""

    def __init__(self, app, contexts, first: int) -> None:
        super().__init__(app, contexts)
        self.all, self.nodes = self.nodes, self.nodes[:first]

    def join(self) -> None:
        self.nodes = self.all


def test_nodes_joining_later_get_their_roles_and_the_defence_is_checked_again():
    contexts = simulation_contexts(config(attack="sf", **{"num-byzantine": 1}), N)
    grid = JoiningGrid(user.app, contexts, first=3)
    adversary = OmniscientAdversary(everyone(FedMedian))
    assert adversary.discover_roles(grid) == set()
    grid.join()  # node 5, Byzantine, joins before sampling: it must not get a plain train message
    messages = adversary.configure_train(1, global_model(), ConfigRecord({"lr": GAMMA}), grid)
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3, 4] and adversary.byzantine == {5}
    grid = JoiningGrid(user.app, simulation_contexts(config(attack="sf", **{"num-byzantine": 2}), N), first=3)
    krum = OmniscientAdversary(Krum(num_malicious_nodes=1))
    krum.discover_roles(grid)
    grid.join()
    with pytest.raises(ValueError, match="2 Byzantine nodes of 5, but Krum"):
        krum.discover_roles(grid)


def test_tolerated_f_is_below_half_and_at_most_the_rules_own_f():
    assert [tolerated_f(DefendedRule(spec, 0), n) for spec in ("mean", "cm", "gm") for n in (4, 5)] == [1, 2] * 3
    assert tolerated_f(DefendedRule("krum", 3), 20) == 3 and tolerated_f(DefendedRule("krum", 3), 6) == 2
    assert tolerated_f(DefendedRule("nnm+cm", 2), 7) == 2 and tolerated_f(DefendedRule("tm", 0), 9) == 0


JUMP_RUN = config(attack="jump", **{"num-byzantine": 1})


def scoring_app(metrics) -> ClientApp:
    """A user app whose evaluate handler reports ``metrics(sum of the model's w, partition id)``."""
    app = ClientApp()

    @app.evaluate()
    def evaluate(msg, context):
        total = float(msg.content["arrays"]["w"].numpy().sum())
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord(metrics(total, pid))}), reply_to=msg)

    return byzantine(app)


def test_evaluate_oracle_is_the_weighted_mean_of_the_nodes_losses():
    """Node i (partition i) reports loss (i + 1) * sum(w) on 10 (i + 1) examples: for nodes 0..2,
    L_H = sum(w) * (1 + 4 + 9) / (1 + 2 + 3)."""
    from flwr.app import Array

    from flwr_byz.flower.oracle import EvaluateOracle

    app = scoring_app(lambda s, i: {"my_loss": (i + 1) * s, "acc": 0.5, "num-examples": 10 * (i + 1)})
    grid = LoopbackGrid(app, simulation_contexts(JUMP_RUN, N))
    model = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32)), "steps": Array(np.array([4]))})
    candidates = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]])
    oracle = EvaluateOracle(grid, [1, 2, 3], model, ("arrays", "config"), ConfigRecord(), None, "num-examples")
    torch.testing.assert_close(oracle(candidates), torch.tensor([6.0, -0.5], dtype=torch.float64) * 14 / 6)
    assert oracle.calls == 1 and len(grid.sent) == 3
    for metrics, key, match in ((lambda s, i: {"a_loss": s, "b_loss": s, "num-examples": 1}, None, "2 names with"),
                                (lambda s, i: {"my_loss": s, "num-examples": 1}, "val_loss", "loss_key=<one of them>"),
                                (lambda s, i: {"my_loss": s}, None, "the weight 'num-examples'")):
        grid = LoopbackGrid(scoring_app(metrics), simulation_contexts(JUMP_RUN, N))
        with pytest.raises(ValueError, match=match):
            EvaluateOracle(grid, [1, 2], model, ("arrays", "config"), ConfigRecord(), key, "num-examples")(candidates)


def test_readme_shows_the_test_apps_two_lines():
    readme = (ROOT / "README.md").read_text()
    client = (ROOT / "examples/audited-pytorch-app/userapp/client_app.py").read_text()
    server = (ROOT / "examples/audited-pytorch-app/userapp/server_app.py").read_text()
    for line, source in (("app = byzantine(app, label_transform=lambda y: 9 - y)", client),
                         ("strategy = OmniscientAdversary(strategy)", server),
                         ("from flwr_byz.flower import byzantine", client),
                         ("from flwr_byz.flower import OmniscientAdversary", server)):
        assert line in source and line in readme


class Spy:
    """A user's ClientApp whose handlers count their calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.app = ClientApp()
        for register in (self.app.train(), self.app.evaluate()):
            register(self.handler)

    def handler(self, msg, context):
        self.calls += 1
        return Message(RecordDict({"arrays": msg.content["arrays"],
                                   "metrics": MetricRecord({"num-examples": 1, "loss": 0.5})}), reply_to=msg)


def score_request(node: int, k: int) -> Message:
    from flwr_byz.flower.protocol import ScoreRequest

    msg = ScoreRequest(global_model(), torch.zeros(k, sum(a.numpy().size for a in global_model().values())),
                       ConfigRecord()).to_message(node)
    msg.metadata.__dict__["_message_id"] = f"score-{node}"
    return msg


def attack_request(node: int) -> Message:
    from flwr_byz.flower.protocol import AttackRequest

    arrays = global_model()
    d = sum(a.numpy().size for a in arrays.values())
    msg = AttackRequest(1, GAMMA, 1.0, "mean", 0, {}, N, 1, list(range(N)), arrays,
                        honest=torch.zeros(N - 1, d)).to_message(node)
    msg.metadata.__dict__["_message_id"] = f"attack-{node}"
    return msg


@pytest.mark.parametrize("run_config, message, node, why", [
    (config(), attack_request(5), 5, "the adversary protocol is off"),
    (config(), score_request(1, 2), 1, "the adversary protocol is off"),
    (config(attack="sf", **{"num-byzantine": 1}), attack_request(1), 1, "partition 0 is honest: it computes no attack"),
    (config(**{"num-byzantine": 1}), attack_request(5), 5, "the run's attack is none: its Byzantine nodes stay silent"),
    (config(attack="sf", **{"num-byzantine": 1}), score_request(1, 2), 1, "attack 'sf' scores no candidate models"),
    (config(attack="jump", **{"num-byzantine": 1}), score_request(5, 2), 5, "partition 4 is Byzantine: only honest"),
    (config(attack="jump", **{"num-byzantine": 1}), score_request(1, 257), 1, "257 candidate models in one score "
                                                                              "request, at most 256"),
])
def test_adversary_requests_are_refused_outside_attacked_runs_without_calling_the_users_code(run_config, message,
                                                                                             node, why):
    """Safe to leave in an app: a request the run config does not call for gets an error reply naming why, and the
    user's handlers never run for it."""
    spy = Spy()
    (reply,) = LoopbackGrid(byzantine(spy.app), simulation_contexts(run_config, N)).send_and_receive([message])
    assert reply.has_error() and "flwr-byz refused" in reply.error.reason
    assert re.search(why, reply.error.reason), reply.error.reason
    assert spy.calls == 0


def test_the_role_query_of_an_honest_run_gets_no_role_as_a_reply_not_an_error():
    """Without Byzantine nodes the role query is answered "no role": a reply naming why, not an error (Flower
    would log an error with its traceback for every node), read by the hook as None; the user's code never runs."""
    spy = Spy()
    (reply,) = LoopbackGrid(byzantine(spy.app), simulation_contexts(config(), N)).send_and_receive([role_query(1)])
    assert not reply.has_error()
    assert dict(reply.content["role"]) == {"no-role": "the run config has no Byzantine node (num-byzantine = 0): "
                                                      "the adversary protocol is off"}
    assert NodeRole.from_reply(reply) is None and spy.calls == 0


class FlowerLikeGrid(LoopbackGrid):
    """A loopback Grid that logs a client exception as Flower's simulation does (ERROR, then its traceback)."""

    def send_and_receive(self, messages, *, timeout=None):
        app = self.app

        def logged(msg, context):
            try:
                return app(msg, context)
            except Exception as err:
                log(ERROR, err)
                log(ERROR, traceback.format_exc())
                raise

        self.app = logged
        try:
            return super().send_and_receive(messages, timeout=timeout)
        finally:
            self.app = app


def test_a_run_without_byzantine_nodes_logs_no_error(caplog):
    """The example app wrapped with byzantine(), honest run: role discovery, a round of training and federated
    evaluation through the hook log nothing at ERROR level, and every node answered without an error."""
    grid = FlowerLikeGrid(user.app, simulation_contexts(config(), N))
    adversary = OmniscientAdversary(everyone(FedMedian), seed=1)
    with caplog.at_level(logging.INFO, logger="flwr"):
        messages = adversary.configure_train(1, global_model(), ConfigRecord({"lr": GAMMA}), grid)
        new, _ = adversary.aggregate_train(1, grid.send_and_receive(messages))
        evaluated = grid.send_and_receive([instruction("evaluate", node, new) for node in grid.nodes])
    assert adversary.roles == dict.fromkeys(range(1, N + 1)) and adversary.byzantine == set()
    assert "Adversary: 0 Byzantine of 5 nodes" in caplog.text  # the log was captured
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not any(r.has_error() for r in grid.send_and_receive([role_query(1)]) + evaluated)


def test_an_honest_run_aggregates_in_an_order_that_does_not_depend_on_node_ids():
    """Nodes have no role in an honest run, so the hook orders replies by their content: two runs whose nodes got
    other ids (as Flower draws them anew) aggregate bit for bit the same model, and no node is Byzantine."""
    results = []
    for ids in ([1, 2, 3, 4, 5], [40, 7, 23, 11, 5]):
        contexts = {new: context for new, context in zip(ids, simulation_contexts(config(), N).values())}
        for new, context in contexts.items():
            context.node_id = new
        grid = LoopbackGrid(user.app, contexts)
        adversary = OmniscientAdversary(everyone(), seed=1)
        messages = adversary.configure_train(1, global_model(), ConfigRecord({"lr": GAMMA}), grid)
        new_model, _ = adversary.aggregate_train(1, grid.send_and_receive(messages))
        assert adversary.byzantine == set() and set(adversary.roles.values()) == {None}
        results.append([a.numpy().tobytes() for a in new_model.values()])
    assert results[0] == results[1]


def unequal_app() -> ClientApp:
    """The test app whose train replies weigh 10 (pid + 1)^2 examples: unequal partitions as Flower sees them."""
    def unequal(msg, context, call):
        reply = call(msg, context)
        if msg.metadata.message_type == "train" and not reply.has_error():
            reply.content["metrics"]["num-examples"] = 10 * (int(context.node_config["partition-id"]) + 1) ** 2
        return reply

    inner = ClientApp(mods=[unequal])
    inner.train()(user.train_fn)
    inner.evaluate()(user.evaluate_fn)
    return byzantine(inner)


@pytest.mark.parametrize("strategy", [everyone(FedAvg), everyone(MultiKrum, num_malicious_nodes=1,
                                                                  num_nodes_to_select=2)])
def test_jumps_predicted_loss_is_the_loss_of_the_model_a_weighted_strategy_builds(strategy):
    """FedAvg and MultiKrum weigh replies by num-examples: the rule JUMP optimises against carries the replies'
    weights (the Byzantine ones: the honest mean's camouflage), so the loss it predicts is the loss of the model
    the strategy actually produced, on unequal partitions. (MultiKrum selects 2 of 5 here, where no two Krum scores
    nearly tie: Flower scores models through a float32 Gram matrix, flwr_byz pseudo-gradients in float64.)"""
    run = config(attack="jump", **{"num-byzantine": 1, "attack-params": "lam_max=20, lam_cap=20"})  # a finite loss
    grid = LoopbackGrid(unequal_app(), simulation_contexts(run, N))
    adversary = OmniscientAdversary(strategy, seed=1)
    messages = adversary.configure_train(1, global_model(), ConfigRecord({"lr": GAMMA}), grid)
    new, metrics = adversary.aggregate_train(1, grid.send_and_receive(messages))
    model = Net()
    model.load_state_dict(new.to_torch_state_dict())
    losses, weights = [], []
    for pid in range(N - 1):
        _, val = load_data(pid, N, 600, 32, 0)
        losses.append(user_test(model, val)[0])
        weights.append(len(val.dataset))
    assert math.isfinite(metrics["jump-loss"])
    assert metrics["jump-loss"] == pytest.approx(np.average(losses, weights=weights), rel=1e-6)  # float32 sums
