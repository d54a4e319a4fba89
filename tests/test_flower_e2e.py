"""Real `flwr run` simulations on Flower's Ray engine (about 30-40 s each)."""

import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT
from flwr_byz.settings import RunSettings
from flwr_byz.engine import run
from flwr_byz.runs.launcher import FlowerLauncher
from flwr_byz.results import is_complete, read_run, results_path, without_wall_times

pytestmark = pytest.mark.flower


def test_robust_strategy_drops_into_an_ordinary_flower_app(launcher):
    out = launcher.run(ROOT / "examples/quickstart-robust", {"num-server-rounds": 3}, num_supernodes=4)
    assert out.ok, out.output[-3000:]
    accuracy = float(re.search(r"final accuracy (\S+)", out.output).group(1))
    assert accuracy > 0.8  # digits MLP after 3 robust rounds (about 0.93 seen); chance is 0.1
    assert "excluded reply" not in out.output


def test_readme_shows_the_tested_quickstart_code():
    source = (ROOT / "examples/quickstart-robust/quickstart/server_app.py").read_text()
    snippet = source.split("# --8<-- [start:strategy]\n")[1].split("    # --8<-- [end:strategy]")[0]
    readme = (ROOT / "README.md").read_text()
    assert "\n".join(line[4:] for line in snippet.splitlines()) in readme


def run_file(config: dict):
    """Settings and round rows of the finished run of ``config`` (paper app defaults otherwise)."""
    settings = RunSettings.from_run_config(config)
    assert is_complete(settings)
    return read_run(results_path(settings))


def test_paper_app_trains_and_writes_results(launcher, tmp_path):
    config = {"task": "mnist-logreg", "rounds": 4, "num-byzantine": 1, "eval-every": 2, "eval-size": 1000,
              "results-dir": str(tmp_path)}
    out = launcher.run(ROOT / "simulations/paper", config, num_supernodes=5)
    assert out.ok, out.output[-3000:]
    settings, rows = run_file(config)
    assert settings["rounds"] == 4 and settings["lr"] == 0.7 and settings["l2"] == 0.0  # Table 3 by task
    assert [r["round"] for r in rows] == [0, 2, 4]
    assert rows[-1]["robust-received"] == 4 and rows[-1]["robust-excluded"] == 0
    assert rows[-1]["test-accuracy"] > rows[0]["test-accuracy"] + 0.05  # 4 rounds on per-worker Dirichlet(0.1) data


def test_a_misspelt_value_fails_the_run_before_training(launcher, tmp_path):
    config = {"task": "mnist-logreg", "attack": "jump", "attack-params": "solver=glob", "rounds": 2,
              "results-dir": str(tmp_path)}
    out = launcher.run(ROOT / "simulations/paper", config, num_supernodes=4)
    assert not out.ok and "jump: unknown solver 'glob'; valid: ['global', 'powell']" in out.output
    assert not list(tmp_path.glob("*.jsonl*"))  # nothing ran


def test_a_failing_byzantine_node_fails_the_run(launcher, tmp_path):
    """tests/apps/faulty: the paper app whose SF attack raises. The run must not turn into an
    attack-free run: it fails with the node's error and leaves no finished results file."""
    out = launcher.run(ROOT / "tests/apps/faulty", {"results-dir": str(tmp_path)}, num_supernodes=4)
    assert not out.ok, out.output[-3000:]
    assert "attack exploded on purpose" in out.output and "failed to attack" in out.output
    assert not list(tmp_path.glob("*.jsonl")) and len(list(tmp_path.glob("*.jsonl.partial"))) == 1


def test_adversary_hook_around_a_flower_builtin_feeds_byzantine_nodes_the_honest_updates(launcher, tmp_path):
    """3 honest + 2 Byzantine nodes, Flower's FedMedian wrapped in OmniscientAdversary, SF attack.

    SF sends a = -mean(honest pseudo-gradients): each Byzantine reply must be exactly
    theta + gamma * gbar of the honest replies the strategy aggregated in the same round; SF is
    shared, so one node computes it and the other echoes it; and the strategy cannot tell the
    Byzantine replies from honest ones (same message type, group, records, keys, dtypes).
    """
    out = launcher.run(ROOT / "tests/apps/probe", {"results-dir": str(tmp_path)}, num_supernodes=5)
    assert out.ok, out.output[-3000:]
    probe = torch.load(tmp_path / "probe.pt")
    assert len(probe["byzantine"]) == 2
    for server_round, seen in probe["rounds"].items():
        replies = dict(seen["replies"])
        assert len(seen["replies"]) == 5 == len(replies)  # n replies, one per node
        theta, gamma = seen["theta"], 0.5
        honest = torch.stack([(theta - v) / gamma for k, v in replies.items() if k not in probe["byzantine"]])
        assert honest.shape[0] == 3
        for node in probe["byzantine"]:
            torch.testing.assert_close(replies[node], theta + gamma * honest.mean(0), rtol=0, atol=1e-6)
        assert len({shape for _, shape in seen["structure"]}) == 1, seen["structure"]
        assert seen["structure"][0][1][0] == "train"
        assert set(probe["metrics"][server_round]) == {"train-loss", "attack-seconds", "honest-spread"}
    attacks = [records for kind, _, records in probe["sent"] if kind == "train.attack"]
    assert sorted(map(tuple, attacks)) == sorted([("attack-config", "echo", "model", "train-config"),
                                                  ("attack-config", "honest", "model", "train-config")] * 2)  # 2 rounds


@pytest.mark.slow  # JUMP on a CNN through `flwr run` is also in the default suite: test_audit (userapp)
def test_mnist_cnn_app_under_jump_records_accuracy_and_lambda(launcher, tmp_path):
    config = {"task": "mnist", "attack": "jump", "num-byzantine": 1, "rounds": 2, "eval-every": 1,
              "eval-size": 500, "jump-loss-size": 64, "results-dir": str(tmp_path)}
    out = launcher.run(ROOT / "simulations/paper", config, num_supernodes=5)
    assert out.ok, out.output[-3000:]
    _, rows = run_file(config)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(0 <= r["test-accuracy"] <= 1 for r in rows)
    assert all(r["robust-received"] == 5 and isinstance(r["jump-lambda"], float) for r in rows[1:])
    assert all(r["attack-seconds"] > 0 and r["jump-losses"] >= 1 for r in rows[1:])  # the leader timed its search
    # The engine runs the CNN's honest steps node after node with the same seeded dropout masks: the same rows.
    assert_same_rows([without_wall_times(r) for r in rows], config,
                     tmp_path / "engine", nodes=5)


@pytest.mark.slow  # two full runs (70 s): the slow job keeps the default suite under 10 minutes
def test_two_runs_with_the_same_seed_are_identical(launcher, tmp_path):
    config = {"task": "mnist-logreg", "attack": "alie", "num-byzantine": 1, "rounds": 3, "eval-every": 1,
              "eval-size": 1000}
    rows = []
    for name in ("a", "b"):
        out = launcher.run(ROOT / "simulations/paper", {**config, "results-dir": str(tmp_path / name)}, 5)
        assert out.ok, out.output[-3000:]
        rows.append([without_wall_times(row)
                     for row in run_file({**config, "results-dir": str(tmp_path / name)})[1]])
    assert rows[0] == rows[1]  # every loss and accuracy, bit for bit
    assert rows[0][-1]["test-accuracy"] != rows[0][0]["test-accuracy"]
    assert_same_rows(rows[0], config, tmp_path / "engine", nodes=5)


def assert_same_rows(flower: list[dict], config: dict, out, nodes: int) -> None:
    """The engine's results file for ``config`` has the Flower run's rows: same rounds and keys, the same
    values to float rounding (the honest steps run as one vmap there); wall times aside. The engine runs at one
    torch thread, as each Flower node does: at two, float reductions differ in the last digits, which JUMP (landing
    on the edges of the rule's jumps) can amplify (the MNIST CNN's test loss after 2 rounds: 2.3047 vs 2.3031)."""
    settings = RunSettings.from_run_config({**config, "results-dir": str(out)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, engine = read_run(run(settings, nodes=nodes))
    finally:
        torch.set_num_threads(threads)
    engine = [without_wall_times(row) for row in engine]
    assert [sorted(r) for r in engine] == [sorted(r) for r in flower]
    for ours, theirs in zip(engine, flower):
        for key, value in theirs.items():
            expected = value if value is None else pytest.approx(value, rel=1e-5, abs=1e-7)  # NaN accuracy: null
            assert ours[key] == expected, (ours["round"], key)


def test_engine_and_flwr_run_agree_on_the_2d_problem_under_jump(launcher, tmp_path):
    config = {"task": "toy2d", "aggregation": "cm", "num-byzantine": 1, "attack": "jump", "rounds": 12,
              "eval-every": 3, "results-dir": str(tmp_path / "flower")}
    out = launcher.run(ROOT / "simulations/paper", config, num_supernodes=3)
    assert out.ok, out.output[-3000:]
    rows = [without_wall_times(row) for row in run_file(config)[1]]
    assert rows[-1]["test-loss"] > 0.6  # JUMP keeps CM far from the minimum (L_H(1, 0) = 0.393)
    assert_same_rows(rows, config, tmp_path / "engine", nodes=3)


def test_planning_attacks_are_refused_by_the_flower_path(launcher, tmp_path):
    config = {"task": "toy2d", "aggregation": "cm", "num-byzantine": 1, "attack": "jump", "jump-tau": 4,
              "rounds": 4, "results-dir": str(tmp_path)}
    out = launcher.run(ROOT / "simulations/paper", config, num_supernodes=3)
    assert not out.ok and "--executor engine" in out.output
    assert not list(tmp_path.glob("*.jsonl*"))


def test_sigterm_to_a_launcher_leaves_no_flower_or_ray_process_behind(tmp_path):
    # A process running a long `flwr run` through FlowerLauncher (as `flwr-byz stress`, sweeps and the benchmarks
    # do) gets SIGTERM once the run is under way: afterwards no process carries its FLWR_HOME.
    home, app = tmp_path / "home", ROOT / "simulations" / "paper"
    config = {"task": "toy2d", "aggregation": "cm", "num-byzantine": 1, "attack": "sf", "rounds": 10**6,
              "eval-every": 1000, "results-dir": str(tmp_path)}
    script = (f"from pathlib import Path\nfrom flwr_byz.runs.launcher import FlowerLauncher\n"
              f"with FlowerLauncher(Path({str(home)!r})) as launcher:\n"
              f"    launcher.run(Path({str(app)!r}), {config!r}, num_supernodes=3)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    probe = FlowerLauncher(home)
    try:
        deadline = time.monotonic() + 180
        while not list(tmp_path.glob("*.partial")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None and list(tmp_path.glob("*.partial")), "the run did not start"
        started = probe.processes()
        assert len(started) >= 4, started  # flwr run, SuperLink, ServerApp/simulation, Ray
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) != 0
        assert probe.processes() == []
    finally:
        probe.stop()
