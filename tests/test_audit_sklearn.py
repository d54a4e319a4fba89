"""`flwr-byz audit` on an app as Flower writes them: scikit-learn (numpy records), FedAvg with federated
evaluation only, the two documented lines and nothing else (`tests/apps/sklearnapp`), through real `flwr run`s."""

from __future__ import annotations

import shutil

import pytest

from conftest import ROOT
from flwr_byz.runs.audit import Audit
from flwr_byz.runs.store import finished_runs

pytestmark = pytest.mark.flower
N = 5


def sklearn_app(tmp_path, rename: tuple[str, str] | None = None):
    app = tmp_path / "sklearnapp"
    shutil.copytree(ROOT / "tests/apps/sklearnapp", app, ignore=shutil.ignore_patterns("__pycache__"))
    if rename:
        client = app / "sklearnapp/client_app.py"
        client.write_text(client.read_text().replace(*rename))
    return app


@pytest.mark.slow  # six runs (115 s): the slow job keeps the default suite under 10 minutes
def test_audit_with_default_flags_and_two_seeds(tmp_path):
    """Default metric (federated accuracy: the app has no evaluate_fn), JUMP's loss metric found in the baseline
    (test_logloss), the audit's seeds in the hook (logged with the defence), training metrics named once."""
    out = tmp_path / "audit"
    audit = Audit(sklearn_app(tmp_path), out, nodes=N, rounds=2, timeout=600)
    report, _, failed = audit.run(["sf", "jump"], [1], [1, 2])
    assert failed == []
    assert "federated-accuracy" in report.read_text()
    runs = finished_runs(out / "runs")
    assert sorted((s["attack"], s["seed"]) for s, _, _ in runs) == \
        [("jump", 1), ("jump", 2), ("none", 1), ("none", 2), ("sf", 1), ("sf", 2)]
    for settings, rows, footer in runs:
        assert footer["defence"]["seed"] == settings["seed"]  # the audit's seed reached the hook
        assert settings.get("loss-key", "") == ("test_logloss" if settings["attack"] == "jump" else "")
        assert [r["round"] for r in rows] == [1, 2]
        last = rows[-1]
        assert "train-logloss" in last and "train-train_logloss" not in last
        assert 0.0 <= last["federated-accuracy"] <= 1.0
        if settings["attack"] == "jump":
            assert last["train-jump-ties"] >= 1 and "train-jump-flat" in last
    baseline = [rows for s, rows, _ in runs if s["attack"] == "none"]
    assert all(rows[-1]["federated-accuracy"] > 0.5 for rows in baseline)  # the app learns without attack


def test_a_loss_metric_without_loss_in_its_name_stops_before_any_attacked_run(tmp_path):
    out = tmp_path / "audit"
    audit = Audit(sklearn_app(tmp_path, ('"test_logloss"', '"test_nll"')), out, nodes=N, rounds=1, timeout=600)
    with pytest.raises(ValueError, match=r"metrics \(test_nll, accuracy\) hold 0 names with 'loss': choose one "
                                         r"with --loss-key"):
        audit.run(["sf", "jump"], [1], [1])
    assert [s["attack"] for s, _, _ in finished_runs(out / "runs")] == ["none"]  # only the baseline ran
    baseline = finished_runs(out / "runs")[0][1]
    audit.loss_key = "test_nll"
    assert audit.jump_loss_key(baseline, ["jump"]) == "test_nll"
    audit.loss_key = "nll"
    with pytest.raises(ValueError, match=r"--loss-key 'nll': the app's evaluate handler reports test_nll, accuracy"):
        audit.jump_loss_key(baseline, ["jump"])
