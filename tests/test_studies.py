"""The 2-D landscape study and the tau trade-off: the findings that hold, and their commands."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.optimize import brentq

from flwr_byz.cli import main
from flwr_byz.runs import executor, store
from flwr_byz.runs.grid import load
from flwr_byz.studies import toy2d, tradeoff


@pytest.fixture(scope="module")
def cm() -> dict[str, toy2d.Trajectory]:
    """The paper's setting (T = 100 from (1.75, -0.2), gamma = 1.2) under CM."""
    return {attack: toy2d.trajectory("cm", attack) for attack in ("sf", "alie", "jump-1", "jump-10")}


def test_jump_keeps_cm_away_from_the_minimum_where_alie_lets_it_converge(cm) -> None:
    for attack in ("jump-1", "jump-10"):
        row = cm[attack].row()
        assert row["min_distance_to_global_min"] > 0.1  # never within 0.1 of (1, 0)
        assert row["final_loss"] > 0.6  # a high-loss region: L_H(1, 0) = 0.393, L_H(theta_1) = 0.671
    alie = cm["alie"].row()
    assert alie["final_loss"] == pytest.approx(toy2d.honest_loss(np.array([[1.0, 0.0]]))[0], abs=2e-3)
    # The exact minimiser lies on the axis, slightly left of (1, 0): dL_H/dx = 0.8 (x+1) e^-(x+1)^2 + 1.2 (x-1) e^-(x-1)^2.
    x = brentq(lambda x: 0.8 * (x + 1) * np.exp(-(x + 1) ** 2) + 1.2 * (x - 1) * np.exp(-(x - 1) ** 2), 0.5, 1.0)
    assert x == pytest.approx(0.973, abs=1e-3)
    assert np.linalg.norm(cm["alie"].thetas[-1] - np.array([x, 0.0])) < 1e-3
    jump = cm["jump-1"].row()["total_loss"]
    assert jump > cm["sf"].row()["total_loss"] + 1 and jump > alie["total_loss"] + 10


def test_honest_loss_is_the_mean_of_the_two_points_losses() -> None:
    # L_i = 1 - b_i exp(-||theta - z_i||^2), z = (-1, 0), (1, 0), b = 0.8, 1.2: at the origin both are e^-1 away.
    assert toy2d.honest_loss(np.array([[0.0, 0.0]]))[0] == pytest.approx(1 - np.exp(-1.0))
    assert toy2d.honest_loss(np.array([[1.0, 0.0]]))[0] == pytest.approx(1 - (0.8 * np.exp(-4.0) + 1.2) / 2)


def test_solve_p_is_never_below_the_jump_plan_it_starts_from() -> None:
    jump = toy2d.trajectory("cm", "jump-100", rounds=12).row()["total_loss"]  # tau > T: one segment, all 12 rounds
    solve = toy2d.trajectory("cm", "solve-p", rounds=12).row()["total_loss"]
    assert solve >= jump - 1e-6


@pytest.mark.slow
def test_the_2d_study_reproduces_the_papers_findings(tmp_path) -> None:
    path, runs = toy2d.study(tmp_path, aggregators=("cm",))
    rows = {r["attack"]: r for r in csv.DictReader(path.open())}
    assert set(rows) == set(toy2d.ATTACKS)
    assert float(rows["solve-p"]["total_loss"]) >= float(rows["jump-100"]["total_loss"]) - 1e-6
    for attack in ("jump-1", "jump-10", "jump-100", "solve-p"):
        assert float(rows[attack]["min_distance_to_global_min"]) > 0.1


def test_toy2d_command_writes_the_table_and_figures(tmp_path, capsys) -> None:
    assert main(["toy2d", "--out", str(tmp_path), "--aggregators", "cm,krum", "--attacks", "none,sf,jump-1-powell",
                 "--rounds", "10"]) == 0
    rows = list(csv.DictReader((tmp_path / "toy2d.csv").open()))
    assert [(r["aggregator"], r["attack"]) for r in rows] == [
        (a, b) for a in ("cm", "krum") for b in ("none", "sf", "jump-1-powell")]
    assert set(toy2d.COLUMNS) <= set(rows[0])
    assert (tmp_path / "toy2d_trajectories.png").stat().st_size > 10_000
    assert (tmp_path / "toy2d_loss.png").stat().st_size > 10_000
    assert "jump-1-powell" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown aggregator 'median' or attack"):
        toy2d.settings_for("median", "sf")


def test_tradeoff_runs_its_spec_through_the_executor_writes_its_tables_and_resumes(tmp_path, capsys,
                                                                                  monkeypatch) -> None:
    argv = ["tradeoff", "--out", str(tmp_path), "--aggregations", "nnm+cm", "--taus", "1,3", "--seeds", "1,2",
            "--rounds", "6", "--eval-every", "3", "--set", "num-byzantine=1", "eval-size=500"]
    assert main(argv) == 0
    assert "sweep appendix-a-tradeoff: 6 runs via engine, 6 to run now" in capsys.readouterr().out
    spec = load(tradeoff.SPEC, results_dir=tmp_path / "runs", overrides={
        "aggregation": ["nnm+cm"], "jump-tau": [1, 3], "seed": [1, 2], "rounds": 6, "eval-every": 3,
        "num-byzantine": 1, "eval-size": 500})
    assert sorted((s.attack, s.jump_tau, s.seed) for s in spec.runs) == [  # the spec's SF runs follow the seeds
        ("jump", 1, 1), ("jump", 1, 2), ("jump", 3, 1), ("jump", 3, 2), ("sf", 1, 1), ("sf", 1, 2)]
    assert all(store.status(s) == "finished" for s in spec.runs)
    path = tmp_path / "tradeoff.csv"
    rows = list(csv.DictReader(path.open()))
    assert [(r["tau"], r["seed"]) for r in rows] == [("1", "1"), ("3", "1"), ("1", "2"), ("3", "2")]
    assert all(float(r["runtime_ratio"]) > 0 and 0 <= float(r["max_accuracy"]) <= 1 for r in rows)
    summary = list(csv.DictReader((tmp_path / "tradeoff_summary.csv").open()))
    assert [(s["tau"], s["seeds"]) for s in summary] == [("1", "2"), ("3", "2")]
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    before = path.read_text()
    monkeypatch.setattr(executor, "_ray", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert main(argv) == 0
    assert "6 runs via engine, 0 to run now" in capsys.readouterr().out and path.read_text() == before


def test_tradeoff_pairs_each_jump_run_with_the_sf_run_of_its_settings() -> None:
    def run(attack, tau, seed, seconds, accuracy, **other):
        settings = {"aggregation": "nnm+cm", "attack": attack, "jump-tau": tau, "seed": seed, "rounds": 6,
                    "results-dir": f"/{attack}", **other}
        return settings, [{"round": 0, "test-accuracy": 0.1}, {"round": 6, "test-accuracy": accuracy}], \
            {"complete": True, "seconds": seconds}

    runs = [run("jump", 4, 1, 8.0, 0.3), run("sf", 1, 1, 2.0, 0.5), run("jump", 1, 1, 4.0, 0.4),
            run("jump", 4, 2, 9.0, 0.2), run("jump", 4, 1, 5.0, 0.6, rounds=7)]  # no SF partner: left out
    assert [(r["tau"], r["seed"], r["max_accuracy"], r["runtime_ratio"]) for r in tradeoff.rows_of(runs)] == [
        (1, 1, 0.4, 2.0), (4, 1, 0.3, 4.0)]
