"""Results files, tables, plots and the CLI's resume logic (no Flower run here)."""

import math

import pytest

from flwr_byz.cli import build_parser, main, stress_sweep
from flwr_byz.settings import RunSettings
from flwr_byz.runs import report, store
from flwr_byz.runs.launcher import toml_value
from flwr_byz.results import RunLog, is_complete, read_run, results_path


def fake_run(tmp_path, attack, accuracies, rounds=20, finish=True, **settings):
    settings = RunSettings(attack=attack, rounds=rounds, results_dir=str(tmp_path), **settings)
    log = RunLog.of(settings)
    for i, acc in enumerate(accuracies):
        log.append({"round": 10 * i, "test-accuracy": acc, "train-loss": math.nan})
    return log.finish() if finish else log.partial


def test_results_round_trip_with_settings_header(tmp_path):
    path = fake_run(tmp_path, "sf", [0.1, 0.5, 0.7])
    settings, rows = read_run(path)
    assert settings["attack"] == "sf" and [r["round"] for r in rows] == [0, 10, 20]
    assert rows[0]["train-loss"] is None  # non-finite values are written as null


def test_summary_table_and_plot(tmp_path):
    paths = [fake_run(tmp_path, "none", [0.1, 0.8, 0.9]), fake_run(tmp_path, "jump", [0.1, 0.3, 0.2])]
    runs = [store.read(p) for p in paths]
    assert report.value(runs[1][1], "test-accuracy") == 0.2 and report.value(runs[1][1], "test-accuracy", "max") == 0.3
    table = report.markdown(report.table(runs, summary="final", percent=True))
    assert "| none | jump | Superiority |" in table and "| 90.0 ± – | **20.0 ± –** | – |" in table
    png = report.curves(runs, tmp_path / "acc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_is_complete_only_with_its_footer_and_its_exact_settings(tmp_path):
    done = RunSettings(attack="sf", rounds=20, results_dir=str(tmp_path))
    fake_run(tmp_path, "sf", [0.1, 0.2, 0.3])
    assert is_complete(done)
    killed = fake_run(tmp_path, "alie", [0.1, 0.2], finish=False)  # stopped at round 10
    assert killed.name.endswith(".jsonl.partial") and not results_path(RunSettings(
        attack="alie", rounds=20, results_dir=str(tmp_path))).exists()
    assert not is_complete(RunSettings(attack="alie", rounds=20, results_dir=str(tmp_path)))
    for other in ({"momentum": 0.0}, {"lr": 0.05}, {"clip": 1.0}, {"rounds": 30}, {"seed": 2}):
        changed = RunSettings(**{"attack": "sf", "rounds": 20, "results_dir": str(tmp_path), **other})
        assert results_path(changed) != results_path(done) and not is_complete(changed)


def test_starting_a_run_never_touches_a_finished_file(tmp_path):
    finished = fake_run(tmp_path, "sf", [0.1, 0.2, 0.3])
    before = finished.read_bytes()
    RunLog.of(RunSettings(attack="sf", rounds=20, results_dir=str(tmp_path))).append({"round": 0})  # same settings
    RunLog.of(RunSettings(attack="sf", rounds=20, momentum=0.0, results_dir=str(tmp_path)))  # other settings
    assert finished.read_bytes() == before and read_run(finished)[1][-1]["round"] == 20


def test_stress_skips_only_runs_with_equal_settings(tmp_path):
    def args(*extra):
        return build_parser().parse_args(["stress", "--attacks", "sf", "--rounds", "20", "--out", str(tmp_path), *extra])

    default = stress_sweep(args()).runs[0]
    fake_run(tmp_path, "sf", [0.1, 0.5], **{k: getattr(default, k) for k in (
        "task", "aggregation", "num_byzantine", "alpha", "seed", "eval_every", "eval_size")})
    assert is_complete(default)
    no_momentum = stress_sweep(args("--set", "momentum=0")).runs[0]
    assert no_momentum.momentum == 0.0 and not is_complete(no_momentum)
    assert stress_sweep(args("--task", "cifar10")).runs[0].lr == 0.25  # the task's paper values, not MNIST's


def test_report_command_reads_finished_runs_only(tmp_path, capsys):
    for seed, (sf, jump) in enumerate([(0.4, 0.2), (0.6, 0.3)], start=1):
        fake_run(tmp_path, "sf", [0.1, sf], seed=seed)
        fake_run(tmp_path, "jump", [0.1, jump], seed=seed)
    fake_run(tmp_path, "alie", [0.1, 0.05], finish=False)  # a killed run: not in the table
    assert main(["report", str(tmp_path), "--metric", "final"]) == 0
    out = capsys.readouterr().out
    assert "| sf | jump | Superiority |" in out and "alie" not in out
    assert "| 50.0 ± 127.1 | **25.0 ± 63.5** | +25.0 |" in out  # t(0.975, 1) * s / sqrt(2)
    assert (tmp_path / "report" / "table_final.csv").exists()


def test_bad_settings_exit_with_a_message_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["stress", "--set", "nonsense", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["stress", "--attacks", "sf,jmup", "--out", str(tmp_path)])
    assert "unknown attack 'jmup'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.jsonl"))


@pytest.mark.parametrize("value, literal", [(True, "true"), (3, "3"), (0.5, "0.5"), ("nnm+cm", '"nnm+cm"')])
def test_run_config_literals(value, literal):
    assert toml_value(value) == literal


def test_stress_on_the_engine_prints_the_table_and_plot_and_resumes(tmp_path, capsys):
    argv = ["stress", "--executor", "engine", "--task", "toy2d", "--aggregation", "cm", "--f", "1", "--nodes", "3",
            "--attacks", "sf,jump", "--set", "jump-tau=5", "--rounds", "10", "--eval-every", "5", "--out",
            str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "round 10/10: test accuracy" in out  # the engine's progress lines
    assert "2 runs via engine, 2 to run now" in out and "finished now 2, already finished 0, failed 0" in out
    assert "| task | aggregation | f | alpha | momentum | sf | jump | Superiority |" in out  # final test loss
    assert "| toy2d | cm | 1 | 0.1 | 0.0 | " in out and (tmp_path / "toy2d_cm_f1_accuracy.png").exists()
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 runs via engine, 0 to run now" in out and "finished now 0, already finished 2" in out


def test_planning_attacks_need_the_engine_executor(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["stress", "--task", "toy2d", "--attacks", "solve-p", "--f", "1", "--nodes", "3", "--out", str(tmp_path)])
    assert "plan ahead on the whole simulation state: add --executor engine" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stress", "--executor", "engine", "--task", "mnist", "--attacks", "jump", "--set", "jump-tau=4",
              "--out", str(tmp_path)])
    assert "use mnist-logreg or toy2d" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.jsonl*"))


def test_report_refuses_runs_without_accuracy(tmp_path, capsys):
    fake_run(tmp_path, "sf", [None, None], task="toy2d", aggregation="cm", num_byzantine=1)
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path)])
    assert "toy2d reports only test loss" in capsys.readouterr().err


@pytest.mark.flower
def test_a_run_that_cannot_start_is_named_with_flowers_error_and_the_command_fails(tmp_path, capsys, monkeypatch):
    import json
    import shutil

    from flwr_byz.flower.paper import APP_DIR
    from flwr_byz.runs import executor

    broken = tmp_path / "app"  # a broken install: the app's pyproject cannot be read
    shutil.copytree(APP_DIR, broken)
    (broken / "pyproject.toml").write_text((APP_DIR / "pyproject.toml").read_text() + "\n[[[ broken\n")
    monkeypatch.setattr(executor, "PAPER_APP", broken)
    argv = ["stress", "--rounds", "3", "--attacks", "none", "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    run = stress_sweep(build_parser().parse_args(argv)).runs[0]
    name = store.label(run)
    assert name.startswith("mnist-logreg_nnm+gm_none_f3_") and name.endswith(run.key)
    assert f"FAILED {name} after" in err and "Failed to load Flower App configuration" in err  # Flower's error
    assert f"1 of 1 runs failed: {name} (error above; full log: {store.log_path(run)})" in err
    assert "Failed to load Flower App configuration" in store.log_path(run).read_text()
    record = json.loads(store.failure_path(run).read_text())
    assert "not-started" in record["error"] and record["settings"] == run.to_run_config()
