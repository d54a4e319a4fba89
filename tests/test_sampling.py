"""Sampling a fraction of the nodes each round (Flower's ``fraction_train``) with the hook: the sample is a pure
function of (seed, round) over the nodes' partition ids, the adversary attacks with the Byzantine nodes among
those sampled, and a sample holding more of them than the defence's f is logged, not hidden; in one process
with the real strategy, hook and ClientApp over a loopback Grid (`flwr run` at 1,000 nodes: docs/scale.md)."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from flower_helpers import LoopbackGrid, NodesGrid, simulation_contexts
from flwr_byz.engine import Simulation
from flwr_byz.flower import OmniscientAdversary, RobustStrategy
from flwr_byz.settings import RunSettings, settings_key
from test_protocol import THETA, Recording, custom_app, run_config



def sample_of(seed: int, server_round: int, keys: list, size: int) -> list:
    """The sample drawn independently of RobustStrategy: ``size`` of ``keys`` (sorted) by a seeded permutation."""
    from flwr_byz.seeds import seeded_generator

    ordered = sorted(keys)
    draw = torch.randperm(len(ordered), generator=seeded_generator(seed, server_round, "sampling"))
    return sorted(ordered[i] for i in draw[:size].tolist())


def sampled_nodes(strategy: RobustStrategy, grid: NodesGrid, server_round: int) -> list[int]:
    record = ArrayRecord({"w": Array(THETA)})
    return sorted(m.metadata.dst_node_id for m in strategy.configure_train(server_round, record, ConfigRecord(), grid))


def test_a_seeded_sample_depends_on_seed_round_and_key_not_on_node_ids():
    strategy = RobustStrategy(aggregation="cm", f=0, fraction_train=0.3, min_train_nodes=2, sampling_seed=5)
    grid = NodesGrid(20)
    first = sampled_nodes(strategy, grid, 1)
    assert len(first) == 6 and first == sample_of(5, 1, grid.nodes, 6)
    assert sampled_nodes(strategy, grid, 1) == first  # a pure function of (seed, round)
    assert sampled_nodes(strategy, grid, 2) != first
    # Other node ids for the same partitions (ids drawn anew each run): the key picks the same partitions.
    renamed = NodesGrid(20)
    renamed.nodes = random.Random(0).sample(range(10**6), 20)  # not in partition order
    partition = {node: p for p, node in enumerate(renamed.nodes)}
    keyed = RobustStrategy(aggregation="cm", f=0, fraction_train=0.3, min_train_nodes=2, sampling_seed=5,
                           node_key=partition.__getitem__)
    assert sorted(partition[n] + 1 for n in sampled_nodes(keyed, renamed, 1)) == first
    # min_train_nodes is a floor, as in FedAvg.
    floor = RobustStrategy(aggregation="cm", f=0, fraction_train=0.1, min_train_nodes=5, sampling_seed=5)
    assert len(sampled_nodes(floor, grid, 1)) == 5


def test_without_a_seed_the_sample_is_fedavgs():
    random.seed(3)
    strategy = RobustStrategy(aggregation="cm", f=0, fraction_train=0.5, min_train_nodes=2)
    grid = NodesGrid(10)
    random.seed(11)
    got = sampled_nodes(strategy, grid, 1)
    random.seed(11)
    assert got == sorted(random.sample(grid.nodes, 5))  # flwr's sample_nodes: the global random


def test_the_adversary_attacks_with_the_byzantine_nodes_among_those_sampled(caplog):
    """10 nodes, the last 4 Byzantine (SF), half sampled a round: only sampled Byzantine nodes reply, every
    reply the defence sees is a sampled node's, and the round's Byzantine count is a metric; a round with more
    Byzantine nodes than the defence's f is logged as such and attacked all the same."""
    n, f = 10, 4
    contexts = simulation_contexts(run_config(**{"num-byzantine": f}), n)
    seen_over_f = False
    for server_round in range(1, 9):
        grid = LoopbackGrid(custom_app(), contexts)
        strategy = Recording(aggregation="cm", f=2, lr_key="step", weighted_by_key="n-samples", fraction_train=0.5,
                             min_train_nodes=3, min_available_nodes=n, fraction_evaluate=0.0, sampling_seed=1)
        adversary = OmniscientAdversary(strategy, seed=3)
        adversary.discover_roles(grid)
        strategy.node_key = adversary.rank
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            messages = list(adversary.configure_train(server_round, ArrayRecord({"w": Array(THETA)}),
                                                      ConfigRecord({"step": 0.5}), grid))
            _, metrics = adversary.aggregate_train(server_round, grid.send_and_receive(messages))
        sample = sample_of(1, server_round, list(range(n)), 5)  # partition ids, the nodes' ranks
        byzantine = [p + 1 for p in sample if p >= n - f]  # node id = partition id + 1
        assert sorted(r.metadata.src_node_id for r in strategy.seen) == [p + 1 for p in sample]
        assert metrics["byzantine-sampled"] == len(byzantine)
        attacked = [r for r in strategy.seen if r.metadata.src_node_id in byzantine]
        honest = [r for r in strategy.seen if r.metadata.src_node_id not in byzantine]
        gbar = np.mean([(THETA - r.content["arrays"]["w"].numpy()) / 0.5 for r in honest], axis=0)
        for r in attacked:  # SF: theta + gamma * gbar, from the sampled honest nodes only
            np.testing.assert_allclose(r.content["arrays"]["w"].numpy(), THETA + 0.5 * gbar, rtol=1e-6, atol=1e-6)
        over = len(byzantine) > 2
        seen_over_f |= over
        assert ("more than the defence's 2" in caplog.text) == over
    assert seen_over_f  # the seeds above do draw a round with 3 or 4 of the 4 Byzantine nodes


def test_a_sampled_run_checks_the_expected_byzantine_count_of_a_sample():
    """200 Byzantine of 1,000 nodes, a tenth sampled: the defence's auto f is the expected 20 of a sample, and
    the hook checks that, not 200 against the whole federation."""
    settings = RunSettings(task="mnist-logreg", num_byzantine=200, fraction_train=0.1, aggregation="nnm+cm")
    assert settings.aggregation_f == 20
    assert RunSettings(task="mnist-logreg", num_byzantine=3, fraction_train=0.5).aggregation_f == 2
    assert RunSettings(task="mnist-logreg", num_byzantine=3).aggregation_f == 3
    strategy = RobustStrategy(aggregation="nnm+cm", f=20, fraction_train=0.1, min_train_nodes=41)
    adversary = OmniscientAdversary(strategy)
    adversary.roles = {node: None for node in range(1000)}
    adversary._check_defence(1000)  # noqa: SLF001 - no Byzantine roles: passes; with 200 of them:
    from flwr_byz.flower.protocol import NodeRole

    adversary.roles = {node: NodeRole(node >= 800, node, True, "sf") for node in range(1000)}
    adversary._check_defence(1000)  # noqa: SLF001 - 20 expected among 100 sampled, f = 20: tolerated
    adversary.roles = {node: NodeRole(node >= 700, node, True, "sf") for node in range(1000)}
    with pytest.raises(ValueError, match="30 Byzantine nodes of 100 sampled"):
        adversary._check_defence(1000)  # noqa: SLF001


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_fraction_train_out_of_range_fails_at_once(fraction):
    with pytest.raises(ValueError, match=r"fraction-train must be in \(0, 1\]"):
        RunSettings(task="mnist-logreg", fraction_train=fraction)


def test_the_engine_refuses_sampling_naming_the_flower_path():
    with pytest.raises(ValueError, match="--executor flower"):
        Simulation(RunSettings(task="mnist-logreg", fraction_train=0.5), 15, "cpu")


def test_stored_runs_keep_their_keys():
    """fraction-train = 1 (all nodes, as before the key existed) leaves a run's key as it was."""
    config = RunSettings(task="mnist-logreg").to_run_config()
    before = {k: v for k, v in config.items() if k != "fraction-train"}
    assert settings_key(config) == settings_key(before)
    assert RunSettings(task="mnist-logreg", fraction_train=0.5).key != RunSettings(task="mnist-logreg").key
