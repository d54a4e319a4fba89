"""Sweeps: spec expansion, the results store (hashing, failures, resume), checkpoints, tables and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flwr_byz.settings import RunSettings
from flwr_byz.engine import Simulation, run
from flwr_byz.engine.runner import checkpoint_path
from flwr_byz.runs import executor, report, store
from flwr_byz.results import read_run, results_path, without_wall_times
from flwr_byz.cli import main
from flwr_byz.runs.grid import expand, load

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "simulations" / "paper" / "sweeps" / "smoke.toml"


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_grid_expands_to_the_cross_product_minus_excludes_plus_includes() -> None:
    grid = {"task": "toy2d", "aggregation": ["cm", "gm"], "attack": ["sf", "jump", "alie"], "seed": [1, 2]}
    runs = expand(grid, exclude=[{"aggregation": "gm", "attack": ["sf", "alie"]}],
                  include=[{"attack": "none", "seed": [1, 2]}, {"aggregation": "cm", "attack": "sf", "seed": 1}])
    assert len(runs) == 12 - 4 + 2  # the second include is already in the grid: once
    assert {(r["aggregation"], r["attack"]) for r in runs if r["attack"] != "none"} == {
        ("cm", "sf"), ("cm", "jump"), ("cm", "alie"), ("gm", "jump")}
    assert [r for r in runs if r["attack"] == "none"] == [
        {"task": "toy2d", "attack": "none", "seed": 1}, {"task": "toy2d", "attack": "none", "seed": 2}]
    assert runs[0] == {"task": "toy2d", "aggregation": "cm", "attack": "sf", "seed": 1}  # the order written


def test_a_bad_spec_fails_before_anything_runs(tmp_path: Path) -> None:
    good = 'name = "x"\n[grid]\ntask = "toy2d"\naggregation = "cm"\nnum-byzantine = 1\n'
    assert len(load(write_spec(tmp_path, good)).runs) == 1
    with pytest.raises(ValueError, match=r"run \{.*'attack': 'jmup'.*unknown attack"):
        load(write_spec(tmp_path, good + 'attack = ["sf", "jmup"]\n'))
    with pytest.raises(ValueError, match="unknown keys \\['honset'\\]"):
        load(write_spec(tmp_path, "honset = 3\n" + good))
    with pytest.raises(ValueError, match='solve-p plan .* use executor = "engine"'):
        load(write_spec(tmp_path, 'executor = "flower"\n' + good + 'attack = "solve-p"\n'))
    with pytest.raises(ValueError, match="KRUM needs"):  # n = 2 honest + 1 Byzantine is too few for Krum
        load(write_spec(tmp_path, 'honest = 2\n' + good.replace('"cm"', '"krum"')))
    with pytest.raises(ValueError, match="unknown executor 'gpu'"):
        load(write_spec(tmp_path, 'executor = "gpu"\n' + good))
    with pytest.raises(ValueError, match=r"exclude keys \['atack'\] are not grid keys"):
        load(write_spec(tmp_path, good + 'attack = ["sf", "alie"]\n[[exclude]]\natack = "sf"\n'))
    with pytest.raises(ValueError, match="empty list for seed"):
        load(write_spec(tmp_path, good + "seed = []\n"))


def test_a_run_spelt_twice_runs_once(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'honest = 2\n[grid]\ntask = "toy2d"\naggregation = "cm"\nnum-byzantine = 1\n'
                                'alpha = 1.0\nattack = ["sf", "alie"]\n[[include]]\nalpha = 1\nattack = "sf"\n'
                                '[[include]]\nattack = "alie"\nseed = 1\n')  # seed 1 is the default
    assert [s.attack for s in load(spec).runs] == ["sf", "alie"]


def test_a_packaged_spec_is_named_by_its_name_and_an_unknown_name_lists_them(tmp_path: Path, capsys) -> None:
    assert load("smoke").runs == load(SMOKE).runs and load("smoke").name == "smoke"
    with pytest.raises(ValueError, match=r"no sweep spec named 'smoek': give a path or one of "
                                         r"appendix-a-tradeoff, jump-solvers, rules-attacks, rules-attacks-cnn, smoke, "
                                         r"table1-cifar10, table6-mnist, table6-slice, table7-cifar10"):
        load("smoek")
    with pytest.raises(SystemExit):
        main(["sweep", "smoek", "--out", str(tmp_path)])
    assert "no sweep spec named 'smoek'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sweep spec missing.toml"):  # a path is a path
        load("missing.toml")


def test_overrides_replace_grid_keys_and_the_axes_of_includes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'honest = 2\n[grid]\ntask = "toy2d"\naggregation = "cm"\nnum-byzantine = 1\n'
                                'attack = "sf"\nseed = [1, 2, 3]\n[[include]]\naggregation = "mean"\n'
                                'num-byzantine = 0\nattack = "none"\nseed = [1, 2, 3]\n')
    runs = load(spec, overrides={"seed": [2], "aggregation": "gm"}).runs
    assert [(s.aggregation, s.attack, s.seed) for s in runs] == [("gm", "sf", 2), ("mean", "none", 2)]


def toy_settings(tmp_path: Path, **changes: object) -> RunSettings:
    base = RunSettings(task="toy2d", aggregation="cm", num_byzantine=1, attack="sf", rounds=5, eval_every=1,
                       results_dir=str(tmp_path))
    return dataclasses.replace(base, **changes)


def test_a_changed_setting_is_a_new_run_and_an_unchanged_one_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "spec.toml").write_text(
        f'honest = 2\n[grid]\ntask = "toy2d"\naggregation = "cm"\nnum-byzantine = 1\nrounds = 5\n'
        f'attack = "sf"\nresults-dir = "{tmp_path}"\n')
    first = load(tmp_path / "spec.toml")
    run(first.runs[0], nodes=3)
    todo, outcome = executor.plan(first)
    assert todo == [] and outcome.skipped == list(first.runs)
    changed = dataclasses.replace(first.runs[0], momentum=0.5)
    assert store.status(changed) == "pending" and results_path(changed) != results_path(first.runs[0])


def test_a_store_keeps_its_runs_when_moved_and_refuses_another_node_count(tmp_path: Path) -> None:
    settings = toy_settings(tmp_path / "a")
    run(settings, nodes=3)
    (tmp_path / "a").rename(tmp_path / "b")
    moved = toy_settings(tmp_path / "b")
    assert executor.plan(executor.Sweep("t", "engine", 2, 0, (moved,)))[1].skipped == [moved]
    with pytest.raises(ValueError, match="holds runs with 2 honest nodes per run, this sweep has 4"):
        executor.plan(executor.Sweep("t", "engine", 4, 0, (moved,)))


def test_failures_are_recorded_and_only_retried_when_asked(tmp_path: Path, capsys) -> None:
    good = toy_settings(tmp_path)
    bad = toy_settings(tmp_path, task="cifar10", data_dir=str(tmp_path / "no-such-data"))  # no such dataset
    sweep = executor.Sweep("t", "engine", 2, 0, (bad, good))
    outcome = executor.run_sweep(sweep, executor.plan(sweep))  # local Ray: the failing run does not stop the other
    assert outcome.finished == [good] and outcome.failed == [bad]
    err = capsys.readouterr().err  # the run's full name and its error on the terminal
    assert f"FAILED {store.label(bad)} after" in err and "no-such-data" in err
    assert outcome.failures() == (f"1 of 2 runs failed: {store.label(bad)} (error above; record: "
                                  f"{store.failure_path(bad)})")
    record = json.loads(store.failure_path(bad).read_text())
    assert "no-such-data" in record["error"] and record["settings"] == bad.to_run_config()
    assert executor.plan(sweep) == ([], executor.Outcome(skipped=[good], failed_before=[bad]))
    assert executor.plan(sweep, retry_failed=True)[0] == [bad]
    pending = toy_settings(tmp_path, attack="alie")  # --retry-failed runs the pending runs too
    assert executor.plan(dataclasses.replace(sweep, runs=(bad, good, pending)), retry_failed=True)[0] == [bad, pending]


def test_a_killed_run_resumes_from_its_checkpoint_bit_for_bit(tmp_path: Path, monkeypatch) -> None:
    # Mimic carries attack state, momentum 0.9 the honest momenta, the shuffler its position.
    settings = RunSettings(task="mnist-logreg", aggregation="nnm+cm", attack="mimic", num_byzantine=1, rounds=6,
                           eval_every=1, eval_size=200, momentum=0.9, results_dir=str(tmp_path / "a"))
    whole = read_run(run(settings, nodes=5))[1]
    killed = dataclasses.replace(settings, results_dir=str(tmp_path / "b"))
    step = Simulation.step

    def dies_in_round_6(self, *args, **kwargs):  # after round 5's row, written after the last checkpoint
        if self.round == 5:
            raise KeyboardInterrupt("killed")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Simulation, "step", dies_in_round_6)
    with pytest.raises(KeyboardInterrupt):
        run(killed, nodes=5, checkpoint_every=2)
    assert torch.load(checkpoint_path(killed), weights_only=False)["simulation"]["round"] == 4
    monkeypatch.setattr(Simulation, "step", step)
    resumed = read_run(run(killed, nodes=5, checkpoint_every=2))[1]
    assert not checkpoint_path(killed).exists()
    assert [without_wall_times(r) for r in resumed] == [without_wall_times(r) for r in whole]


def test_confidence_interval_on_known_samples() -> None:
    mean, half = report.interval([1.0, 2.0, 3.0])  # s = 1, t(0.975, 2) = 4.302652729749464
    assert mean == 2.0 and half == pytest.approx(4.302652729749464 / 3**0.5, rel=1e-12)
    assert report.interval([5.0]) == (5.0, 0.0)
    assert report.interval([2.0, 2.0]) == (2.0, 0.0)


def fixture_run(aggregation: str, f: int, attack: str, seed: int, accuracies: list[float]) -> store.Run:
    settings = {"task": "mnist", "aggregation": aggregation, "num-byzantine": f, "alpha": 0.1, "momentum": 0.9,
                "attack": attack, "seed": seed, "results-dir": "/x", "rounds": 2 * (len(accuracies) - 1)}
    rows = [{"round": 2 * i, "test-accuracy": a} for i, a in enumerate(accuracies)]
    return settings, rows, {"complete": True}


def test_table_rendering_on_a_fixture(tmp_path: Path) -> None:
    runs = [fixture_run("nnm+cm", 3, "sf", 1, [0.1, 0.6, 0.5]), fixture_run("nnm+cm", 3, "sf", 2, [0.1, 0.7, 0.7]),
            fixture_run("nnm+cm", 3, "jump", 1, [0.1, 0.4, 0.3]), fixture_run("nnm+cm", 3, "jump", 2, [0.1, 0.2, 0.2]),
            fixture_run("nnm+cm", 3, "none", 1, [0.1, 0.9, 0.9]), fixture_run("nnm+gm", 1, "sf", 1, [0.1, 0.5, 0.4])]
    table = report.table(runs, summary="max", percent=True)
    assert table.attacks == ["none", "sf", "jump"] and table.keys == list(report.ROW_KEYS)
    cm = table.rows[0]
    assert cm.cells["sf"][:1] == (65.0,) and cm.cells["jump"][0] == pytest.approx(30.0)
    assert cm.cells["jump"][1] == pytest.approx(12.706204736174707 * 10)  # t(0.975, 1) * s / sqrt(2)
    assert cm.strongest == "jump" and cm.superiority == pytest.approx(35.0)
    assert table.rows[1].superiority is None and table.rows[1].strongest == "sf"
    text = report.markdown(table)
    assert text.splitlines()[0] == "| task | aggregation | f | alpha | momentum | none | sf | jump | Superiority |"
    assert text.splitlines()[2] == "| mnist | nnm+cm | 3 | 0.1 | 0.9 | 90.0 ± – | 65.0 ± 63.5 | **30.0 ± 127.1** | +35.0 |"
    assert text.splitlines()[3] == "| mnist | nnm+gm | 1 | 0.1 | 0.9 | – | **50.0 ± –** | – | – |"  # 1 seed
    assert report.table(runs, summary="final", percent=True).rows[0].cells["sf"][0] == pytest.approx(60.0)
    labels, values = report.matrix(table)  # aggregation and f differ between the rows: they label them
    assert labels == ["nnm+cm, 3", "nnm+gm, 1"] and values.shape == (2, 3)
    assert values[0].tolist() == pytest.approx([90.0, 65.0, 30.0]) and values[1, 1] == pytest.approx(50.0)
    assert np.isnan(values[1, 0]) and np.isnan(values[1, 2])
    _, paths = report.write_paper_report(runs, tmp_path / "report")
    assert {p.name for p in paths} >= {"table_max.md", "table_max.csv", "table_max.png",
                                       "curves_mnist_nnm+cm_0.1_0.9.png", "breakdown_mnist_nnm+cm_0.1_0.9.png"}
    assert "jump_ci95" in (tmp_path / "report" / "table_max.csv").read_text().splitlines()[0]


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flwr_byz.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, **kwargs)


def test_smoke_sweep_end_to_end_through_ray_the_store_and_the_report(tmp_path: Path) -> None:
    proc = cli("sweep", str(SMOKE), "--out", str(tmp_path))
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    spec = load(SMOKE, results_dir=tmp_path)
    assert len(spec.runs) == 18 and all(store.status(s) == "finished" for s in spec.runs)
    assert len(list(tmp_path.glob("*.jsonl"))) == 18 and not list(tmp_path.glob("*.partial"))
    report = tmp_path / "report"
    assert (report / "table_max.md").read_text().count("\n") == 2 + 3  # header, rule, 3 rows (cm f1/f2, gm f1)
    assert len(list(report.glob("curves_*.png"))) == 2 and len(list(report.glob("breakdown_*.png"))) == 2
    again = cli("sweep", str(SMOKE), "--out", str(tmp_path), "--no-report")
    assert "18 runs via engine, 0 to run now" in again.communicate(timeout=300)[0]
    proc = cli("export", str(tmp_path))
    assert proc.communicate(timeout=120)[0].strip().endswith("18 runs")
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 18 * 4  # rounds 0, 2, 4, 6 of each run


def test_killing_a_sweep_midway_and_resuming_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'honest = 2\n[grid]\ntask = "toy2d"\naggregation = ["cm", "gm"]\n'
                                'attack = ["sf", "alie", "foe", "jump"]\nnum-byzantine = 1\nrounds = 3000\n'
                                'eval-every = 1000\n')
    out = tmp_path / "store"
    proc = cli("sweep", str(spec), "--out", str(out), "--no-report", start_new_session=True)
    deadline = time.monotonic() + 240
    while len(list(out.glob("*.jsonl"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be killed: make its runs longer"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    finished = {p.name for p in out.glob("*.jsonl")}
    assert 2 <= len(finished) < 8
    assert not _ray_processes(), "Ray processes left behind"
    resumed = cli("sweep", str(spec), "--out", str(out), "--no-report")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0 and f"{8 - len(finished)} to run now" in output, output
    runs = load(spec, results_dir=out).runs
    assert sorted(p.name for p in out.glob("*.jsonl")) == sorted(results_path(s).name for s in runs)
    assert finished <= {p.name for p in out.glob("*.jsonl")}


def _ray_processes() -> list[str]:
    """Command lines of live Ray processes started under /tmp/flwr-byz-ray-* by this test's Python environment
    (this suite's sweeps, not another checkout's running on the same machine)."""
    time.sleep(2)
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "flwr-byz-ray-" in cmdline and sys.prefix in cmdline and ("raylet" in cmdline or "gcs_server" in cmdline
                                               or "default_worker" in cmdline):
                found.append(cmdline[:120])
    return found


@pytest.mark.flower
def test_the_flower_executor_runs_a_sweep_through_flwr_run(tmp_path: Path) -> None:
    runs = (toy_settings(tmp_path, attack="alie"), toy_settings(tmp_path, attack="jump"))
    sweep = executor.Sweep("f", "flower", 2, 0, runs)
    outcome = executor.run_sweep(sweep, executor.plan(sweep))
    assert outcome.finished == list(runs) and not outcome.failed
    engine = read_run(run(dataclasses.replace(runs[1], results_dir=str(tmp_path / "engine")), nodes=3))[1]
    assert [r["test-loss"] for r in read_run(results_path(runs[1]))[1]] == pytest.approx(
        [r["test-loss"] for r in engine], rel=1e-5)  # the same maths on both executors
