"""The audit report: final values, breakdown point, table, Markdown and files, on hand-made runs."""

import csv

import pytest

from flwr_byz.runs.report import audit_table, breakdown_f, goal_of, markdown, value, write_audit_report

T = 12.706204736174707  # Student-t 0.975 quantile, 1 degree of freedom: half-width of two values a, b = T |a - b| / 2

# (attack, f, seed) -> final accuracy. Baseline 0.94, 0.96; strongest: sf at f = 1, jump at f = 2 and 3.
FINAL = {("none", 0, 1): 0.94, ("none", 0, 2): 0.96,
         ("sf", 1, 1): 0.90, ("sf", 1, 2): 0.88, ("sf", 2, 1): 0.60, ("sf", 2, 2): 0.60,
         ("sf", 3, 1): 0.30, ("sf", 3, 2): 0.30,
         ("jump", 1, 1): 0.91, ("jump", 1, 2): 0.91, ("jump", 2, 1): 0.40, ("jump", 2, 2): 0.44,
         ("jump", 3, 1): 0.10}  # one seed only


def run(attack, f, seed, final):
    """Rounds 0-3 with accuracy (the last = ``final``), round 4 with the loss only; loss = 1 - accuracy."""
    accuracies = [0.1, 0.5, (0.5 + final) / 2, final]
    rows = [{"round": r, "accuracy": a, "loss": 1 - a} for r, a in enumerate(accuracies)]
    rows.append({"round": 4, "accuracy": None, "loss": 1 - final})
    settings = {"app": "userapp", "attack": attack, "num-byzantine": f, "seed": seed, "rounds": 4, "run-config": {}}
    return settings, rows, {"complete": True}


RUNS = [run(a, f, s, v) for (a, f, s), v in FINAL.items()]


def test_goal_of_metric_names():
    assert goal_of("accuracy") == "max"
    assert goal_of("f1") == "max"
    assert goal_of("val_Loss") == "min"
    assert goal_of("test-ERROR-rate") == "min"


def test_final_value_is_the_last_row_that_has_the_metric():
    rows = RUNS[0][1]
    assert value(rows, "accuracy") == 0.94  # round 4 has accuracy None
    assert value(rows, "loss") == 1 - 0.94
    assert value(rows, "accuracy", "max") == 0.94 and value(RUNS[2][1], "loss", "max") == 1 - 0.1
    with pytest.raises(ValueError, match=r"'f1'.*--metric <one of accuracy, loss>"):
        value(rows, "f1")


def test_breakdown_max_goal():
    assert breakdown_f({1: 0.9, 2: 0.4, 3: 0.1}, 0.95, 0.5, "max") == 2  # 0.4 < 0.475
    assert breakdown_f({1: 0.9, 2: 0.8}, 0.95, 0.5, "max") is None
    assert breakdown_f({3: 0.1, 1: 0.9, 2: 0.2}, 0.95, 0.5, "max") == 2  # smallest broken f, not first key


def test_breakdown_exactly_at_the_threshold_is_not_broken():
    assert breakdown_f({1: 0.4, 2: 0.39}, 0.8, 0.5, "max") == 2  # 0.4 == 0.5 * 0.8
    assert breakdown_f({1: 0.6, 2: 0.61}, 0.3, 0.5, "min") == 2  # 0.6 == 0.3 / 0.5


def test_breakdown_min_goal():
    assert breakdown_f({1: 0.5, 2: 0.7, 3: 0.9}, 0.3, 0.5, "min") == 2  # 0.7 > 0.6
    assert breakdown_f({1: 0.1, 2: 0.2}, 0.3, 0.5, "min") is None  # lower losses never break


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_breakdown_threshold_must_be_in_0_1(threshold):
    with pytest.raises(ValueError, match="threshold"):
        breakdown_f({1: 0.5}, 0.9, threshold, "max")
    assert breakdown_f({1: 0.5}, 0.9, 1.0, "max") == 1


def strongest(table):
    return {r.values[0]: r.strongest for r in table.rows if r.strongest is not None}


def test_audit_table():
    table = audit_table(RUNS, "accuracy", "max")
    assert table.attacks == ["none", "sf", "jump"]  # the paper's order
    assert table.keys == ["num-byzantine"] and [r.values for r in table.rows] == [(0,), (1,), (2,), (3,)]
    assert set(table.row(0).cells) == {"none"} and table.row(0).strongest is None  # the baseline's row
    assert table.baseline == pytest.approx((0.95, T * 0.01, 2)) and table.row(0).cells["none"] == table.baseline
    assert table.row(1).cells["sf"] == pytest.approx(((0.90 + 0.88) / 2, T * abs(0.90 - 0.88) / 2, 2))
    assert table.row(2).cells["jump"] == pytest.approx(((0.40 + 0.44) / 2, T * abs(0.40 - 0.44) / 2, 2))
    assert table.row(3).cells["jump"] == (0.10, 0.0, 1)
    assert strongest(table) == {1: "sf", 2: "jump", 3: "jump"}
    assert table.breakdown == 2  # jump's 0.42 < 0.5 * 0.95


def test_none_runs_under_attack_are_left_out_of_the_audit():
    table = audit_table([*RUNS, run("none", 2, 1, 0.1)], "accuracy", "max")
    assert set(table.row(2).cells) == {"sf", "jump"} and table.baseline[0] == pytest.approx(0.95)


def test_audit_table_min_goal_from_the_metric_name():
    table = audit_table(RUNS, "loss")  # loss = 1 - accuracy: baseline 0.05, limit 0.1
    assert table.goal == "min"
    assert table.baseline[0] == pytest.approx(0.05)
    assert strongest(table) == {1: "sf", 2: "jump", 3: "jump"}  # the highest loss
    assert table.breakdown == 1  # sf's 0.11 > 0.05 / 0.5


def test_audit_table_needs_a_baseline_and_the_metric():
    with pytest.raises(ValueError, match="baseline"):
        audit_table([r for r in RUNS if r[0]["attack"] != "none"], "accuracy", "max")
    with pytest.raises(ValueError, match="accuracy, loss"):
        audit_table(RUNS, "f1", "max")


def test_markdown_lines():
    lines = markdown(audit_table(RUNS, "accuracy", "max", 0.5)).splitlines()
    assert lines[0] == "Baseline (no attack, f = 0): accuracy = 0.9500 ± 0.1271 (2 seeds); higher is better."
    assert lines[2] == "| f | none | sf | jump | strongest |"
    assert lines[4] == "| 0 | 0.9500 ± 0.1271 | – | – | – |"
    assert lines[5] == "| 1 | – | **0.8900 ± 0.1271** | 0.9100 ± 0.0000 | sf |"  # T * 0.01 = 0.12706
    assert lines[6] == "| 2 | – | 0.6000 ± 0.0000 | **0.4200 ± 0.2541** | jump |"  # T * 0.02 = 0.25412
    assert lines[7] == "| 3 | – | 0.3000 ± 0.0000 | **0.1000 ± –** | jump |"
    assert lines[-1] == ("Breakdown: f = 2 (the first f at which accuracy under the strongest attack falls below "
                         "50% of the no-attack value 0.9500)")


def test_markdown_without_breakdown_and_missing_cells():
    runs = [r for r in RUNS if not (r[0]["attack"] == "jump" and r[0]["num-byzantine"] == 3)]
    lines = markdown(audit_table(runs, "accuracy", "max", threshold=0.25)).splitlines()
    assert lines[7] == "| 3 | – | **0.3000 ± 0.0000** | – | sf |"
    assert lines[-1] == ("No breakdown up to f = 3 (accuracy under the strongest attack stays at or above 25% of the "
                         "no-attack value 0.9500)")


def test_write_report(tmp_path):
    report, paths = write_audit_report(RUNS, tmp_path / "audit", "accuracy", title="userapp")
    out = tmp_path / "audit"
    assert report == out / "report.md"
    assert set(paths) == {report, out / "table.csv", out / "metric-vs-round.png", out / "metric-vs-f.png"}
    text = report.read_text()
    assert text.startswith("# Robustness audit: userapp\n")
    assert "](metric-vs-round.png)" in text and "](metric-vs-f.png)" in text
    assert "Breakdown: f = 2" in text
    for png in ("metric-vs-round.png", "metric-vs-f.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "table.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["num-byzantine", "none", "none_ci95", "none_seeds", "sf", "sf_ci95", "sf_seeds", "jump",
                       "jump_ci95", "jump_seeds", "strongest", "superiority"]
    assert len(rows) == 1 + 1 + 3  # header, baseline, 3 f
    assert rows[1][:4] == ["0", "0.95", str(round(T * 0.01, 6)), "2"] and rows[1][4:] == [""] * 8
    assert rows[4] == ["3", "", "", "", "0.3", "0.0", "2", "0.1", "0.0", "1", "jump", "0.2"]


def test_a_diverged_run_counts_as_the_worst_and_failed_runs_are_listed(tmp_path):
    """A run whose final loss is NaN (stored as "nan") is the strongest attack and broken at once."""
    settings, rows, footer = run("jump", 1, 1, 0.9)
    rows[-1]["loss"] = "nan"
    runs = [*RUNS[:2], run("sf", 1, 1, 0.9), (settings, rows, footer)]
    table = audit_table(runs, "loss")
    assert strongest(table) == {1: "jump"} and table.breakdown == 1
    assert table.row(1).cells["jump"][0] == float("inf")
    table = audit_table([*runs[:3], run("jump", 1, 1, float("nan"))], "accuracy")
    assert strongest(table) == {1: "jump"} and table.row(1).cells["jump"][0] == float("-inf")
    report, _ = write_audit_report(runs, tmp_path, "loss", failed=["sf_f2_s1"])
    assert "Failed runs (their cells are left out; errors in runs/*.failed.json): sf_f2_s1" in report.read_text()
