"""RobustStrategy on hand-built Flower replies: the update rule, integer buffers, hostile replies."""

import logging

import numpy as np
import pytest

from flower_helpers import configure, error_reply, reply
from flwr_byz.flower import RobustStrategy

THETA = {"w": np.array([1.0, 1.0], dtype=np.float32),
         "steps": np.array(10, dtype=np.int64),
         "b": np.array([[0.5]], dtype=np.float64)}
GRADS = [1.0, 2.0, 3.0, 4.0, 100.0]  # first coordinate of each node's pseudo-gradient


def honest_reply(node, g, gamma, steps=11):
    return reply(node, {"w": np.array([1.0 - gamma * g, 1.0], dtype=np.float32),
                        "steps": np.array(steps, dtype=np.int64),
                        "b": np.array([[0.5 - gamma * g]], dtype=np.float64)})


def run_round(strategy, replies, num_nodes=5, config=None):
    configure(strategy, THETA, num_nodes, config)
    return strategy.aggregate_train(1, replies)


@pytest.fixture
def flwr_logs():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_update_is_theta_minus_server_lr_gamma_times_aggregate():
    strategy = RobustStrategy(aggregation="cm", f=1, min_train_nodes=5, server_lr=2.0)
    arrays, metrics = run_round(strategy, [honest_reply(i, g, 0.5) for i, g in enumerate(GRADS)],
                                config={"lr": 0.5})
    # g_i = (theta - theta_i) / 0.5 = GRADS; CM = 3; theta - 2 * 0.5 * 3 = -2
    assert np.allclose(arrays["w"].numpy(), [-2.0, 1.0])
    assert np.allclose(arrays["b"].numpy(), [[0.5 - 3.0]])
    assert arrays["w"].dtype == "float32" and arrays["b"].dtype == "float64"
    assert list(arrays.keys()) == ["w", "steps", "b"]
    assert metrics["robust-excluded"] == 0 and metrics["robust-received"] == 5


def test_without_lr_in_config_gamma_is_one():
    strategy = RobustStrategy(aggregation="cm", f=1, min_train_nodes=5)
    arrays, _ = run_round(strategy, [honest_reply(i, g, 1.0) for i, g in enumerate(GRADS)])
    assert np.allclose(arrays["w"].numpy(), [1.0 - 3.0, 1.0])


def test_lr_schedule_is_written_into_the_train_config():
    strategy = RobustStrategy(aggregation="mean", min_train_nodes=2, lr_schedule=lambda t: 0.1 * t)
    messages = configure(strategy, THETA, 2, server_round=3)
    assert messages[0].content["config"]["lr"] == pytest.approx(0.3)


def test_integer_buffers_take_the_median_of_the_replies():
    strategy = RobustStrategy(aggregation="cm", f=1, min_train_nodes=5)
    replies = [honest_reply(i, g, 1.0, steps=s) for i, (g, s) in enumerate(zip(GRADS, [11, 12, 13, 14, 10**9]))]
    arrays, _ = run_round(strategy, replies)
    assert arrays["steps"].numpy() == 13 and arrays["steps"].dtype == "int64"


HOSTILE = {
    "missing key": lambda n: reply(n, {"w": THETA["w"], "steps": THETA["steps"]}),
    "extra key": lambda n: reply(n, {**THETA, "evil": np.zeros(1, np.float32)}),
    "wrong shape": lambda n: reply(n, {**THETA, "w": np.zeros(3, np.float32)}),
    "wrong dtype": lambda n: reply(n, {**THETA, "w": np.zeros(2, np.float64)}),
    "nan": lambda n: reply(n, {**THETA, "w": np.array([np.nan, 1.0], np.float32)}),
    "inf": lambda n: reply(n, {**THETA, "b": np.array([[np.inf]])}),
    "error": lambda n: error_reply(n),
    "nan metric": lambda n: reply(n, THETA, {"loss": float("nan")}),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_reply_is_excluded_logged_and_counted_against_f(kind, flwr_logs):
    strategy = RobustStrategy(aggregation="cm", f=1, min_train_nodes=5)
    replies = [honest_reply(i, g, 1.0) for i, g in enumerate(GRADS[:4])] + [HOSTILE[kind](99)]
    arrays, metrics = run_round(strategy, replies)
    # the four valid replies are aggregated with f = 0: median(1, 2, 3, 4) = 2.5
    assert np.allclose(arrays["w"].numpy(), [1.0 - 2.5, 1.0])
    assert metrics["robust-excluded"] == 1
    assert any("node 99" in r.getMessage() for r in flwr_logs)


def test_inconsistent_metric_keys_are_excluded():
    strategy = RobustStrategy(aggregation="cm", f=1, min_train_nodes=5)
    replies = [reply(i, THETA, {"loss": 1.0}) for i in range(4)] + [reply(9, THETA, {"other": 1.0})]
    _, metrics = run_round(strategy, replies)
    assert metrics["robust-excluded"] == 1 and metrics["loss"] == pytest.approx(1.0)


def test_too_few_valid_replies_keep_the_old_model(flwr_logs):
    strategy = RobustStrategy(aggregation="krum", f=1, min_train_nodes=5)
    replies = [honest_reply(0, 1.0, 1.0), honest_reply(1, 2.0, 1.0)] + [HOSTILE["nan"](10 + i) for i in range(3)]
    arrays, metrics = run_round(strategy, replies)
    assert arrays is None and metrics["robust-excluded"] == 3
    assert any("keeping the old model" in r.getMessage() for r in flwr_logs)


def test_impossible_configuration_fails_when_nodes_are_sampled():
    strategy = RobustStrategy(aggregation="cm", f=2, min_train_nodes=4, min_available_nodes=4)
    with pytest.raises(ValueError, match=r"CM needs n > 2f, got n=4, f=2"):
        configure(strategy, THETA, 4)


def test_unknown_rule_fails_at_construction():
    with pytest.raises(ValueError, match="valid rules"):
        RobustStrategy(aggregation="fedmedian")


@pytest.mark.parametrize("spec", ["nnm+cm", "nnm+gm", "krum", "cm"])
def test_huge_finite_replies_never_stall_or_poison_training(spec, flwr_logs):
    """Finite float32 replies pass the NaN/Inf screen; at the dtype's maximum their pseudo-gradients
    (theta - theta_i) / gamma overflow: those replies are excluded (counted against f), and at 1e20 they
    are aggregated. Either way the model moves by the honest median, never stays put or explodes."""
    strategy = RobustStrategy(aggregation=spec, f=2, min_train_nodes=7, min_available_nodes=7)
    honest = [honest_reply(i, g, 0.1) for i, g in enumerate([1.0, 1.5, 2.0, 2.5, 3.0])]
    for value, excluded in ((np.finfo(np.float32).max, 2), (1e20, 0)):
        hostile = [reply(90 + i, {"w": np.full(2, value * (-1) ** i, dtype=np.float32), "steps": np.array(11),
                                  "b": np.array([[value]])}) for i in range(2)]
        arrays, metrics = run_round(strategy, honest + hostile, num_nodes=7, config={"lr": 0.1})
        assert arrays is not None and metrics["robust-excluded"] == excluded
        w = arrays["w"].numpy()
        assert np.isfinite(w).all() and 1.0 - 0.1 * 3.0 <= w[0] <= 1.0 - 0.1 * 1.0, (value, w)


def test_logs_like_fedavg_received_failures_and_the_summary_inside_the_tree(flwr_logs):
    """FedAvg's "Received N results and M failures" line (and each failure) is kept, and the robust rule is a
    branch of FedAvg's summary tree, not a line after it."""
    strategy = RobustStrategy(aggregation="cm", f=1, min_train_nodes=5)
    run_round(strategy, [honest_reply(i, g, 1.0) for i, g in enumerate(GRADS[:4])] + [error_reply(99)])
    messages = [r.getMessage() for r in flwr_logs]
    assert "aggregate_train: Received 4 results and 1 failures" in messages
    assert any(m.startswith("\t> Received error in reply from node 99") for m in messages)
    flwr_logs.clear()
    strategy.summary()
    summary = [r.getMessage() for r in flwr_logs]
    assert summary[0].startswith("\t├──> Robust aggregation: cm, f=1") and summary[-1].startswith("\t\t└──")
