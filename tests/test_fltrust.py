"""FLTrust (Cao et al., NDSS 2021) against a plain-numpy reference written from the paper, hardened like the other
rules, and wired where a rule works: the root set held out of the honest data, the server's update in the
engine and in RobustStrategy, and the omniscient adversary that knows it."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from flower_helpers import LoopbackGrid, simulation_contexts
from flwr_byz.aggregation import get_aggregator
from flwr_byz.engine import Simulation
from flwr_byz.flower import OmniscientAdversary, RobustStrategy
from flwr_byz.flower.protocol import ATTACK_TYPE, HONEST_RECORD, AttackRequest
from flwr_byz.node_data import TrustedUpdate, honest_partitions, root_indices
from flwr_byz.settings import RunSettings
from flwr_byz.tasks.partition import partition
from test_protocol import THETA, Recording, custom_app, run_config


def fltrust_numpy(g: np.ndarray, g0: np.ndarray) -> np.ndarray:
    """The paper's equations (4)-(6), float64: ReLU-clipped cosine trust scores, replies rescaled to ||g0||,
    the trust-weighted mean; g0 itself when every score is 0."""
    norm0 = np.linalg.norm(g0)
    scores, rescaled = [], []
    for gi in g:
        ni = np.linalg.norm(gi)
        scores.append(max(0.0, gi @ g0 / (ni * norm0)) if ni > 0 else 0.0)
        rescaled.append(gi * norm0 / ni if ni > 0 else gi)
    scores = np.array(scores)
    return g0 if scores.sum() == 0 else (scores[:, None] * np.array(rescaled)).sum(0) / scores.sum()


def fltrust(g0: torch.Tensor):
    return get_aggregator("fltrust", 0).with_reference(g0)


def test_a_hand_worked_round():
    """g0 = (1, 0): (2, 0) scores 1 and becomes (1, 0); (1, 1) scores 1/sqrt2 and becomes (1, 1)/sqrt2; (-1, 0)
    and (0, 3) score 0. Output: ((1 + 1/2), 1/2) / (1 + 1/sqrt2)."""
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    expected = torch.tensor([1.5, 0.5], dtype=torch.float64) / (1 + 2**-0.5)
    torch.testing.assert_close(fltrust(torch.tensor([1.0, 0.0], dtype=torch.float64))(x), expected)


@pytest.mark.parametrize("seed", range(5))
def test_equals_the_papers_equations(seed):
    rng = np.random.default_rng(seed)
    g0 = rng.normal(0.5, 1.0, 20)
    g = np.concatenate([g0 + rng.normal(0, 1.5, (9, 20)), -3 * g0[None] + rng.normal(0, 1, (3, 20))])
    got = fltrust(torch.from_numpy(g0))(torch.from_numpy(g))
    np.testing.assert_allclose(got.numpy(), fltrust_numpy(g, g0), rtol=1e-12, atol=1e-12)


def test_every_reply_against_g0_falls_back_to_g0():
    g0 = torch.tensor([1.0, 2.0, -1.0])
    torch.testing.assert_close(fltrust(g0)(torch.stack([-g0, -3 * g0, torch.zeros(3)])), g0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_magnitude_takes_the_output_beyond_g0s_norm(dtype):
    """Byzantine replies up to the dtype's maximum, along g0, against it or across: the output stays finite with
    norm at most ||g0||, and replies along g0 of any size weigh as their direction only."""
    gen = torch.Generator().manual_seed(0)
    honest = (1.0 + 0.3 * torch.randn(8, 30, generator=gen)).to(dtype)
    g0 = honest.mean(0)
    top = torch.finfo(dtype).max
    for magnitude, sign in itertools.product([1.0, 1e3, 1e20, 1e30, top], [1.0, -1.0]):
        byz = sign * magnitude * (g0 / g0.abs().max()).expand(3, -1)
        out = fltrust(g0)(torch.cat([honest, byz]))
        assert out.isfinite().all() and out.double().norm() <= g0.double().norm() * (1 + 1e-5), (magnitude, sign)
    unit = fltrust(g0)(torch.cat([honest, (g0 / g0.norm()).expand(3, -1)]))
    huge = fltrust(g0)(torch.cat([honest, (top * (g0 / g0.abs().max())).expand(3, -1)]))
    torch.testing.assert_close(huge, unit, rtol=1e-5, atol=1e-6)


def test_permutation_invariant_and_batched_as_a_loop():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 9, 16, generator=gen, dtype=torch.float64)
    g0 = torch.randn(16, generator=gen, dtype=torch.float64)
    rule = fltrust(g0)
    batch = rule(x)
    for k in range(4):
        torch.testing.assert_close(batch[k], rule(x[k]), rtol=0, atol=1e-15)
        perm = torch.randperm(9, generator=gen)
        torch.testing.assert_close(rule(x[k][perm]), batch[k], rtol=1e-14, atol=1e-15)


def test_missing_pieces_fail_at_once_naming_the_fix():
    with pytest.raises(ValueError, match="reference update g0"):
        get_aggregator("fltrust", 0)(torch.randn(5, 3))
    with pytest.raises(ValueError, match="root_train"):
        RobustStrategy(aggregation="fltrust")
    with pytest.raises(ValueError, match="root-size > 0"):
        RunSettings(task="mnist-logreg", aggregation="fltrust", root_size=0)
    with pytest.raises(ValueError, match="not finite"):
        fltrust(torch.tensor([1.0, float("nan")]))
    assert RunSettings(task="mnist-logreg", aggregation="fltrust").root_size == 100
    assert RunSettings(task="mnist-logreg", aggregation="nnm+cm").root_size == 0


def test_the_root_set_is_class_balanced_held_out_and_changes_nothing_else():
    settings = RunSettings(task="mnist-logreg", aggregation="fltrust", alpha=0.0)
    _, _, y, parts = honest_partitions(settings, 12)
    root = root_indices(y, 100, settings.seed)
    assert np.bincount(y.numpy()[root]).tolist() == [10] * 10
    assert all(np.intersect1d(p, root).size == 0 for p in parts)
    assert sum(map(len, parts)) == len(y) - 100  # IID: every other example, once
    plain = RunSettings(task="mnist-logreg", alpha=0.0)
    _, _, _, before = honest_partitions(plain, 12)
    expected = partition(y.numpy(), 12, None, plain.seed, scheme=plain.partition)
    assert all(np.array_equal(a, b) for a, b in zip(before, expected, strict=True))


def test_the_engine_scores_against_the_servers_step_and_resumes_bit_for_bit():
    """Each round moves by FLTrust of the replies against g0, the server's own step on its root set (recomputed
    here by a TrustedUpdate in lockstep); a run resumed from a checkpoint (the root-set momentum included) goes
    on bit for bit."""
    settings = RunSettings(task="mnist-logreg", aggregation="fltrust", attack="alie", num_byzantine=3, rounds=4)
    sim, server = Simulation(settings, 15, "cpu"), TrustedUpdate(settings)
    rounds = []
    for _ in range(3):
        state = dict(sim.state)
        r = sim.step()
        gamma = settings.lr_at(r.round)
        g0 = (r.params - sim.layout.flatten(server(state, r.round, gamma))) / gamma
        replies = torch.cat([r.honest, r.attack])
        torch.testing.assert_close(r.update.theta, r.params - r.lr * fltrust(g0)(replies), rtol=1e-5, atol=1e-6)
        rounds.append(r)
    saved = copy.deepcopy(sim.state_dict())
    first = sim.step()
    again = Simulation(settings, 15, "cpu")
    again.load_state_dict(saved)
    assert torch.equal(again.step().update.theta, first.update.theta)


def test_the_adversary_knows_g0_and_attacks_the_rule_the_server_runs():
    """RobustStrategy(fltrust, root_train) through the hook: the attack request carries the strategy's g0, and
    the model the strategy moves to is FLTrust, with that g0, of the replies it saw (Byzantine ones included)."""
    g0_target = np.linspace(0.5, 1.5, THETA.size).astype(np.float32)

    def root_train(arrays: ArrayRecord, config: ConfigRecord) -> ArrayRecord:
        return ArrayRecord({"w": Array(arrays["w"].numpy() - np.float32(config["step"]) * g0_target)})

    strategy = Recording(aggregation="fltrust", lr_key="step", weighted_by_key="n-samples", min_train_nodes=7,
                         min_available_nodes=7, fraction_evaluate=0.0, root_train=root_train)
    grid = LoopbackGrid(custom_app(), simulation_contexts(run_config(attack="alie"), 7))
    adversary = OmniscientAdversary(strategy, seed=3)
    messages = adversary.configure_train(1, ArrayRecord({"w": Array(THETA)}), ConfigRecord({"step": 0.5}), grid)
    arrays, _ = adversary.aggregate_train(1, grid.send_and_receive(messages))
    torch.testing.assert_close(strategy.reference, torch.from_numpy(g0_target), rtol=1e-6, atol=1e-6)
    request = AttackRequest.from_message(next(m for m in grid.sent if m.metadata.message_type == ATTACK_TYPE
                                              and HONEST_RECORD in m.content.array_records))
    assert request.aggregation == "fltrust" and torch.equal(request.reference, strategy.reference)
    seen = torch.stack([(torch.from_numpy(THETA) - torch.from_numpy(r.content["arrays"]["w"].numpy())) / 0.5
                        for r in strategy.seen])
    expected = torch.from_numpy(THETA) - 0.5 * fltrust(strategy.reference)(seen)
    torch.testing.assert_close(torch.from_numpy(arrays["w"].numpy()), expected, rtol=1e-6, atol=1e-6)
