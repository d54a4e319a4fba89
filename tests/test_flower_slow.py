"""Long `flwr run` checks, excluded by default: `bash scripts/test.sh -m slow`."""

import pickle

import numpy as np
import pytest

from conftest import ROOT
from flwr_byz.attacks import ATTACKS
from flwr_byz.results import read_run

pytestmark = [pytest.mark.slow, pytest.mark.flower]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_attack_runs_through_flower_clients(launcher, tmp_path, attack):
    config = {"task": "mnist-logreg", "attack": attack, "aggregation": "nnm+gm", "num-byzantine": 2,
              "rounds": 3, "eval-every": 3, "eval-size": 500, "results-dir": str(tmp_path)}
    out = launcher.run(ROOT / "simulations/paper", config, num_supernodes=7)
    assert out.ok, out.output[-3000:]
    _, rows = read_run(next(tmp_path.glob("*.jsonl")))  # finished runs only (partial files end in .partial)
    last = rows[-1]
    assert last["round"] == 3 and last["robust-received"] + last["robust-excluded"] == 7
    assert last["robust-excluded"] == (2 if attack == "inf" else 0)  # +inf replies are screened out
    assert last["test-loss"] is not None  # the model stayed finite


def test_cifar10_runs_from_a_user_folder(launcher, tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 40) for i in range(1, 6)), ("test_batch", 50)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    config = {"task": "cifar10", "attack": "sf", "num-byzantine": 1, "rounds": 2, "eval-every": 1, "alpha": 0,
              "batch-size": 8, "data-dir": str(tmp_path / "data"), "results-dir": str(tmp_path)}
    out = launcher.run(ROOT / "simulations/paper", config, num_supernodes=4)
    assert out.ok, out.output[-3000:]
    settings, rows = read_run(next(tmp_path.glob("*.jsonl")))
    assert (settings["lr"], settings["lr-milestone"], settings["clip"], settings["l2"]) == (0.25, 1000, 5.0, 0.01)
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["robust-received"] == 4
