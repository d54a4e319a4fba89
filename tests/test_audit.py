"""`flwr-byz audit` on the test app `userapp` through real `flwr run`s: the report, and what the strategy
aggregated (recorded by a probe ServerApp) checked against the attacks computed from the honest replies."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from flwr_byz.runs.audit import Audit, stage
from flwr_byz.runs.store import export, finished_runs

sys.path.insert(0, str(ROOT / "examples/audited-pytorch-app"))
from userapp.task import Net, load_data  # noqa: E402
from userapp.task import test as user_test  # noqa: E402 - not a pytest test

pytestmark = pytest.mark.flower
N, GAMMA, EXAMPLES = 5, 0.05, 1000
SETTINGS = {"train-examples": EXAMPLES, "strategy": "fedmedian"}


def probe_app(tmp_path):
    """userapp with its ServerApp replaced by the recording probe."""
    app = tmp_path / "userapp"
    shutil.copytree(ROOT / "examples/audited-pytorch-app", app, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "tests/apps/userapp_probe.py", app / "userapp/probe_server.py")
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("userapp.server_app:app", "userapp.probe_server:app"))
    return app


def users_loss(state: dict, honest_partitions: list[int]) -> float:
    """The user's own evaluate loss at ``state``: num-examples-weighted over the honest nodes' validation data."""
    model = Net()
    model.load_state_dict(state)
    losses, weights = [], []
    for pid in honest_partitions:
        _, val = load_data(pid, N, EXAMPLES, 32, 0)
        losses.append(user_test(model, val)[0])
        weights.append(len(val.dataset))
    return float(np.average(losses, weights=weights))


def test_audit_runs_the_grid_and_the_byzantine_replies_are_the_attacks(tmp_path, monkeypatch):
    monkeypatch.setenv("USERAPP_PROBE_DIR", str(tmp_path))
    app, out = probe_app(tmp_path), tmp_path / "audit"
    audit = Audit(app, out, nodes=N, rounds=2, run_config=SETTINGS, timeout=600)
    report, paths, failed = audit.run(["none", "sf", "jump"], [2], [1], "accuracy")
    assert failed == []
    text = report.read_text()
    assert "| f | none | sf | jump | strongest |" in text and text.count("\n| 1 |") == 0 and text.count("\n| 2 |") == 1
    assert {p.name for p in paths} == {"report.md", "table.csv", "metric-vs-round.png", "metric-vs-f.png"}
    runs = finished_runs(out / "runs")
    assert sorted((s["attack"], s["num-byzantine"]) for s, _, _ in runs) == \
        [("jump", 2), ("none", 0), ("sf", 2)]
    assert all([r["round"] for r in rows] == [0, 1, 2] for _, rows, _ in runs)
    csv_path, exported = export(out / "runs", tmp_path / "audit.csv")
    assert exported == 3 and len(csv_path.read_text().splitlines()) == 1 + 3 * 3

    for attack, f in (("sf", 2), ("jump", 2)):
        probe = torch.load(tmp_path / f"{attack}_f{f}_s1.pt", weights_only=False)
        assert len(probe["byzantine"]) == f and probe["nodes"] == N
        honest_pids = [probe["ranks"][node] for node in probe["ranks"] if node not in probe["byzantine"]]
        for server_round, seen in probe["rounds"].items():
            theta, replies = seen["theta"], seen["replies"]
            gbar = torch.stack([(theta - v) / GAMMA for k, v in replies.items() if k not in probe["byzantine"]]).mean(0)
            metrics = probe["metrics"][server_round]
            lam = -1.0 if attack == "sf" else metrics["jump-lambda"]
            for node in probe["byzantine"]:
                torch.testing.assert_close(replies[node], theta - GAMMA * lam * gbar, rtol=1e-5, atol=1e-6)
            if attack == "jump":  # the oracle scored the user's loss at the model the defence then built
                assert metrics["jump-loss"] == pytest.approx(users_loss(seen["aggregate"], honest_pids), rel=1e-4)
                assert metrics["oracle-calls"] >= 1

    before = {p: p.stat().st_mtime for p in (out / "runs").glob("*.jsonl")}
    audit.run(["none", "sf", "jump"], [2], [1], "loss")  # resumed: nothing runs again
    assert {p: p.stat().st_mtime for p in (out / "runs").glob("*.jsonl")} == before
    with pytest.raises(ValueError, match=r"--f \[3\]: RecordingFedMedian \(cm, f=0\) on 5 nodes tolerates 1 <= f <= 2"):
        audit.run(["none", "sf"], [3], [1], "accuracy")
    with pytest.raises(ValueError, match=r"no evaluated round reports the metric 'f1': use --metric <one of"):
        audit.run(["none", "sf"], None, [1], "f1")


def test_audit_of_an_app_whose_clientapp_is_not_wrapped_stops_naming_the_fix(tmp_path):
    app = tmp_path / "userapp"
    shutil.copytree(ROOT / "examples/audited-pytorch-app", app, ignore=shutil.ignore_patterns("__pycache__"))
    client = app / "userapp/client_app.py"
    client.write_text(client.read_text().replace("app = byzantine(app, label_transform=lambda y: 9 - y)", ""))
    audit = Audit(app, tmp_path / "audit", nodes=3, rounds=1, run_config=SETTINGS, timeout=300)
    with pytest.raises(RuntimeError, match=r"(?s)the app failed without attack.*flwr_byz.flower.byzantine\(app\)"):
        audit.run(["none", "sf"], None, [1], "accuracy")


def test_stage_declares_the_wrappers_keys_and_keeps_the_apps(tmp_path):
    import tomllib

    staged = stage(ROOT / "examples/audited-pytorch-app", tmp_path / "staged")
    config = tomllib.loads((staged / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert config["attack"] == "none" and config["num-byzantine"] == 0 and config["attack-params"] == ""
    assert config["seed"] == 0 and config["strategy"] == "fedavg" and config["num-server-rounds"] == 3
    with pytest.raises(ValueError, match=r"--run-config keys \['typo'\] are not in the app's"):
        Audit(ROOT / "examples/audited-pytorch-app", tmp_path / "a", run_config={"typo": 1})
    with pytest.raises(ValueError, match="not a Flower app"):
        Audit(tmp_path / "staged" / "userapp", tmp_path / "a")
    with pytest.raises(ValueError, match=r"--run-config keys \['attack', 'seed'\] are the audit's: use --attacks"):
        Audit(ROOT / "examples/audited-pytorch-app", tmp_path / "a", run_config={"attack": "sf", "seed": 2})
    with pytest.raises(ValueError, match="is inside the app's folder"):
        Audit(ROOT / "examples/audited-pytorch-app", ROOT / "examples/audited-pytorch-app/results")


def test_rows_keep_evaluation_training_and_divergence_apart():
    """Training metrics never pass for evaluation ones (a name clash, a round evaluate_fn skipped), and a
    diverged value stays non-finite."""
    from flwr_byz.runs.audit import rows

    found = [{"event": "evaluate", "round": 0, "metrics": {"accuracy": 0.1}},
             {"event": "train", "round": 1, "time": 5.0, "metrics": {"accuracy": 0.9, "jump-lambda": -2.0}},
             {"event": "federated-evaluate", "round": 1, "metrics": {"accuracy": 0.4}},
             {"event": "train", "round": 2, "time": 6.5, "metrics": {"accuracy": 0.95}},
             {"event": "evaluate", "round": 2, "metrics": {"accuracy": 0.5, "loss": float("nan")}},
             {"event": "defence", "strategy": "FedAvg"}]
    assert rows(found) == [
        {"round": 0, "accuracy": 0.1},
        {"round": 1, "train-accuracy": 0.9, "train-jump-lambda": -2.0, "time": 5.0, "federated-accuracy": 0.4},
        {"round": 2, "train-accuracy": 0.95, "time": 6.5, "accuracy": 0.5, "loss": "nan"},
    ]


def test_training_metrics_are_prefixed_once():
    from flwr_byz.runs.audit import column

    assert column("train-", "train_logloss") == "train-logloss"
    assert column("train-", "train-accuracy") == "train-accuracy"
    assert column("train-", "trainer_loss") == "train-trainer_loss"  # only the word itself is dropped
    assert column("train-", "jump-lambda") == "train-jump-lambda"
    assert column("federated-", "federated_accuracy") == "federated-accuracy"
    assert column("", "accuracy") == "accuracy"


def test_a_crash_is_reported_with_its_own_error_and_a_missing_hook_with_the_fix(tmp_path):
    """The hint to wrap the strategy is for runs without any hook event; a run whose hook logged its defence
    and then failed is reported with its own error."""
    import json

    from flwr_byz.flower.adversary import EVENT
    from flwr_byz.runs.audit import AuditRun, UserApp
    from flwr_byz.runs.launcher import RunOutcome

    app, run = UserApp(tmp_path, None, 60), AuditRun("app", "src", 5, "jump", 1, 1, store=str(tmp_path))
    crash = "ValueError: JUMP needs your evaluate handler's loss"
    hooked = f'INFO : {EVENT}{json.dumps({"event": "defence", "tolerated_f": 2})}\nTraceback ...\n{crash}\n'
    error = app.collect(run, RunOutcome("1", "finished:failed", hooked), 1.0)
    assert crash in error and "OmniscientAdversary" not in error
    error = app.collect(run, RunOutcome("1", "finished:failed", f"Traceback ...\n{crash}\n"), 1.0)
    assert "wrap the ServerApp's strategy in flwr_byz.flower.OmniscientAdversary" in error and crash in error


def test_the_default_metric_is_what_the_app_reports():
    from flwr_byz.runs.audit import resolve_metric

    central = [{"round": 0, "accuracy": 0.1, "federated-accuracy": 0.2, "loss": 1.0}]
    federated = [{"round": 1, "federated-accuracy": 0.2, "federated-test_logloss": 0.9, "train-logloss": 1.0}]
    assert resolve_metric(central, "auto") == "accuracy"
    assert resolve_metric(federated, "auto") == "federated-accuracy"
    assert resolve_metric(federated, "federated-test_logloss") == "federated-test_logloss"
    with pytest.raises(ValueError, match=r"neither accuracy nor federated-accuracy: choose --metric <one of "
                                         r"federated-test_logloss>"):
        resolve_metric([{"round": 1, "federated-test_logloss": 0.9}], "auto")
    with pytest.raises(ValueError, match=r"no evaluated round reports the metric 'f1'"):
        resolve_metric(federated, "f1")
