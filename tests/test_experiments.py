"""Results files, tables, plots and the CLI's resume logic (no Flower run here)."""

import math

import pytest

from flwr_byz.cli import complete, main
from flwr_byz.config import RunSettings
from flwr_byz.experiments.flower import toml_value
from flwr_byz.experiments.report import format_table, plot_accuracy, summary_row
from flwr_byz.experiments.results import RunLog, read_run, results_path


def fake_run(tmp_path, attack, accuracies, rounds=20):
    settings = RunSettings(attack=attack, rounds=rounds, results_dir=str(tmp_path))
    log = RunLog(results_path(settings), settings)
    for i, acc in enumerate(accuracies):
        log.append({"round": 10 * i, "test-accuracy": acc, "train-loss": math.nan})
    return results_path(settings)


def test_results_round_trip_with_settings_header(tmp_path):
    path = fake_run(tmp_path, "sf", [0.1, 0.5, 0.7])
    settings, rows = read_run(path)
    assert settings["attack"] == "sf" and [r["round"] for r in rows] == [0, 10, 20]
    assert rows[0]["train-loss"] is None  # non-finite values are written as null


def test_summary_table_and_plot(tmp_path):
    paths = [fake_run(tmp_path, "none", [0.1, 0.8, 0.9]), fake_run(tmp_path, "jump", [0.1, 0.3, 0.2])]
    rows = [summary_row(p) for p in paths]
    assert rows[1]["final"] == 0.2 and rows[1]["max"] == 0.3
    table = format_table(rows)
    assert "jump" in table and "20.0" in table and "90.0" in table
    png = plot_accuracy(paths, tmp_path / "acc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_resumes_by_skipping_complete_runs(tmp_path):
    assert complete(fake_run(tmp_path, "sf", [0.1, 0.2, 0.3], rounds=20), 20)
    assert not complete(fake_run(tmp_path, "alie", [0.1, 0.2], rounds=20), 20)  # stopped at round 10
    assert not complete(tmp_path / "missing.jsonl", 20)


def test_report_command(tmp_path, capsys):
    fake_run(tmp_path, "sf", [0.1, 0.4])
    assert main(["report", str(tmp_path), "--plot", str(tmp_path / "p.png")]) == 0
    assert "sf" in capsys.readouterr().out and (tmp_path / "p.png").exists()


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
