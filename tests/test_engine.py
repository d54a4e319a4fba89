"""The in-process engine: the Flower path's maths, round by round, and its planning adversaries."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from flwr_byz.attacks import get_attack
from flwr_byz.settings import RunSettings
from flwr_byz.engine import Simulation, run
from flwr_byz.engine.planning import Rollout, plan_global, plan_powell, planner
from flwr_byz.attacks.line_search import GlobalSearch
from flwr_byz.studies.replay import leader_context, simulate
from flwr_byz.results import read_run
from flwr_byz.flat import FlatLayout
from flwr_byz.tasks import get_task, worker_step
from flwr_byz.node_data import honest_partitions

SETTINGS = RunSettings(task="mnist-logreg", aggregation="nnm+cm", num_byzantine=1, attack="sf", rounds=3, seed=3)
TOY = RunSettings(task="toy2d", aggregation="cm", num_byzantine=1, attack="jump", rounds=12, eval_every=4)


def test_rounds_chain_through_the_rule_in_the_adversarys_reply_order() -> None:
    sim = Simulation(SETTINGS, nodes=5, device="cpu")
    shuffler, rule = random.Random(SETTINGS.seed), SETTINGS.aggregator()
    torch.manual_seed(SETTINGS.seed)
    model = get_task("mnist-logreg").build_model()
    theta = FlatLayout.of(model.state_dict()).flatten(model.state_dict())
    for t in (1, 2, 3):
        done = sim.step()
        assert done.round == t and done.honest.shape == (4, 7850)
        torch.testing.assert_close(done.params, theta, rtol=0, atol=0)
        torch.testing.assert_close(done.attack[0], -done.honest.mean(0), rtol=0, atol=1e-6)  # SF, read back
        order = list(range(5))
        shuffler.shuffle(order)
        theta = theta - done.lr * rule(torch.cat([done.honest, done.attack])[order])
        assert done.metrics["robust-received"] == 5 and done.metrics["robust-excluded"] == 0
    torch.testing.assert_close(sim.theta, theta, rtol=0, atol=0)


def test_honest_vectors_are_what_the_server_reads_from_worker_step() -> None:
    # Round 1 of honest node 2 from scratch: the seeded model, its partition, worker_step; the node sends
    # theta - gamma m and the server reads (theta - theta_2) / gamma.
    torch.manual_seed(SETTINGS.seed)
    model = get_task("mnist-logreg").build_model()
    task, x, y, parts = honest_partitions(SETTINGS, 4)
    part = torch.as_tensor(parts[2])
    step = worker_step(task, model, x[part], y[part], None, SETTINGS.worker(), SETTINGS.seed, 2, 1)
    theta = FlatLayout.of(model.state_dict()).flatten(model.state_dict())
    expected = (theta - (theta - SETTINGS.lr * step.momentum)) / SETTINGS.lr
    vectorised = Simulation(SETTINGS, nodes=5, device="cpu")
    looped = Simulation(SETTINGS, nodes=5, device="cpu")
    looped.workers.vectorised = False  # worker_step node after node, as the Flower clients run
    assert vectorised.workers.vectorised
    a, b = vectorised.step(), looped.step()
    torch.testing.assert_close(b.honest[2], expected, rtol=0, atol=0)
    torch.testing.assert_close(a.honest, b.honest, rtol=1e-5, atol=1e-7)  # one vmap: the same maths
    assert a.metrics["train-loss"] == pytest.approx(b.metrics["train-loss"], rel=1e-6)


def test_cnn_steps_node_after_node_with_seeded_dropout() -> None:
    settings = RunSettings(task="mnist", aggregation="mean", num_byzantine=1, attack="none", rounds=1, seed=2)
    sim = Simulation(settings, nodes=3, device="cpu")
    assert not sim.workers.vectorised  # dropout masks are seeded per node and round inside the model
    first = sim.step()
    again = Simulation(settings, nodes=3, device="cpu").step()
    torch.testing.assert_close(first.honest, again.honest, rtol=0, atol=0)
    assert first.attack is None and first.metrics["robust-received"] == 2


def test_attacks_with_per_node_randomness_send_different_vectors() -> None:
    settings = dataclasses.replace(SETTINGS, num_byzantine=2, attack="gaussian", aggregation="cm")
    done = Simulation(settings, nodes=6, device="cpu").step()
    assert done.attack.shape == (2, 7850) and not torch.equal(done.attack[0], done.attack[1])
    shared = Simulation(dataclasses.replace(settings, attack="alie"), nodes=6, device="cpu").step()
    torch.testing.assert_close(shared.attack[0], shared.attack[1], rtol=0, atol=0)


def test_label_flipping_runs_the_honest_pipeline_on_flipped_labels() -> None:
    settings = dataclasses.replace(SETTINGS, attack="lf")
    sim = Simulation(settings, nodes=5, device="cpu")
    done = sim.step()
    task, x, y, parts = honest_partitions(settings, 4)
    torch.manual_seed(settings.seed)
    model = task.build_model()
    part = torch.as_tensor(parts[0])  # node 4 = h + 0 flips the labels of honest partition 0
    step = worker_step(task, model, x[part], 9 - y[part], None, settings.worker(), settings.seed, 4, 1)
    torch.testing.assert_close(done.attack[0], step.momentum, rtol=0, atol=1e-6)


def test_jump_rounds_are_replayable_from_the_leaders_context() -> None:
    settings = dataclasses.replace(SETTINGS, attack="jump", jump_loss_size=64, jump_screen_size=16, rounds=2)
    rounds = list(simulate(settings, nodes=5))
    assert all(r.metrics["jump-finalists"] >= 1 and r.metrics["attack-seconds"] > 0 for r in rounds)
    state = rounds[-1]
    attack = get_attack("jump")
    vector = attack(state.honest, leader_context(settings, state))
    torch.testing.assert_close(vector, state.attack, rtol=0, atol=1e-6)
    assert attack.metrics["jump-lambda"] == state.metrics["jump-lambda"]


def test_engine_results_file_has_the_flower_paths_rows(tmp_path) -> None:
    settings = dataclasses.replace(SETTINGS, attack="jump", rounds=4, eval_every=2, eval_size=300,
                                   results_dir=str(tmp_path))
    header, rows = read_run(run(settings, nodes=5))
    assert header == settings.to_run_config()
    assert [r["round"] for r in rows] == [0, 2, 4]
    keys = {"round", "test-loss", "test-accuracy", "train-loss", "robust-excluded", "robust-received", "jump-lambda",
            "jump-loss", "jump-ties", "jump-flat", "jump-evals", "jump-losses", "jump-calls", "jump-finalists",
            "jump-setup-seconds", "jump-aggregate-seconds", "jump-loss-seconds", "honest-spread", "attack-seconds",
            "elapsed"}
    assert set(rows[0]) == {"round", "test-loss", "test-accuracy", "elapsed"} and set(rows[-1]) == keys
    footer = json.loads(tmp_path.joinpath(f"{settings.name}_{settings.key}.jsonl").read_text().splitlines()[-1])
    assert footer["complete"] is True


# ------------------------------------------------------------------ planning adversaries
def test_a_tau_plan_beats_the_greedy_one_on_its_own_segment_and_is_what_the_run_plays() -> None:
    # GM on the 2-D problem over 40 rounds: planning ahead pays (JUMP-100 jumps over the minimum at step ~3,
    # greedy JUMP only at step ~60), so coordinate ascent must raise the greedy plan's total, and beat Powell.
    gm = dataclasses.replace(TOY, aggregation="gm", rounds=40)
    rollout = Rollout(Simulation(gm, nodes=3, device="cpu"), 40)
    total = lambda lams: float(rollout.total(lams[None], 0, rollout.start)[0])  # noqa: E731
    greedy, greedy_total = plan_global(rollout, GlobalSearch(), sweeps=0)
    planned, planned_total = plan_global(rollout, GlobalSearch(), sweeps=1)
    assert (greedy_total, planned_total) == pytest.approx((total(greedy), total(planned)), rel=1e-9)
    assert total(planned) > total(greedy) + 2  # 29.09 vs 25.51 seen
    # Played in the real simulation (CM, tau = 10), a plan gives the planned iterates.
    tau = dataclasses.replace(TOY, jump_tau=10)
    sim = Simulation(tau, nodes=3, device="cpu")
    rollout = Rollout(sim, 10)
    plan = planner(tau, sim)
    played = [plan.step() for _ in range(10)]
    realised = sum(float(rollout.ahead[j].loss(played[j].update.theta[None])[0]) for j in range(10))
    assert realised == pytest.approx(played[0].metrics["jump-plan-loss"], rel=1e-5)
    powell, _ = plan_powell(rollout, maxfev=200)  # the paper's solver from lambda = 1 does no better
    assert realised >= float(rollout.total(powell[None], 0, rollout.start)[0]) - 1e-9
    assert all(r.metrics["jump-tau"] == 10 and r.metrics["attack-seconds"] > 0 for r in played)


def test_planning_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="jump-tau must be at least 1"):
        dataclasses.replace(TOY, jump_tau=0)
    cnn = RunSettings(task="mnist", attack="jump", jump_tau=4, num_byzantine=1)
    with pytest.raises(ValueError, match="use mnist-logreg or toy2d"):
        planner(cnn, Simulation(cnn, nodes=3, device="cpu"))
    with pytest.raises(ValueError, match="unknown JUMP solver 'glob'; valid: global, powell"):
        planner(dataclasses.replace(TOY, jump_tau=3, attack_params="solver=glob"), Simulation(TOY, 3, "cpu"))
    with pytest.raises(ValueError, match=r"attack-params \['finalists'\] are not parameters of the jump-tau planner"):
        planner(dataclasses.replace(TOY, jump_tau=3, attack_params="finalists=3"), Simulation(TOY, 3, "cpu"))
    with pytest.raises(ValueError, match="solve-p takes no attack-params"):
        planner(dataclasses.replace(TOY, attack="solve-p", attack_params="radii=3"), Simulation(TOY, 3, "cpu"))
    powell = dataclasses.replace(TOY, jump_tau=3, attack_params="solver=powell, maxfev=50")
    assert planner(powell, Simulation(powell, 3, "cpu")).params == {"maxfev": 50}  # the planner's, not JUMP-1's
    with pytest.raises(ValueError, match=r"KRUM needs n > 2f \+ 2, got n=3, f=1"):
        Simulation(dataclasses.replace(TOY, aggregation="krum"), 3, "cpu")  # as RobustStrategy refuses it
    big = dataclasses.replace(SETTINGS, attack="solve-p")
    with pytest.raises(ValueError, match="d <= SOLVE_P_MAX_D = 64"):
        planner(big, Simulation(big, nodes=5, device="cpu"))


def test_the_engine_imports_no_flower_module() -> None:
    import subprocess
    import sys

    code = ("import sys; from flwr_byz.settings import RunSettings; from flwr_byz.engine import Simulation, run; "
            "import flwr_byz.engine.planning; "
            "Simulation(RunSettings(task='mnist-logreg', attack='jump', num_byzantine=1, rounds=1), 5, 'cpu').step(); "
            "print(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
