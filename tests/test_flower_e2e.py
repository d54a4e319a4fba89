"""Real `flwr run` simulations on Flower's Ray engine (about 30-40 s each)."""

import re

import pytest

from conftest import ROOT
from flwr_byz.experiments.results import read_run

pytestmark = pytest.mark.flower


def test_robust_strategy_drops_into_an_ordinary_flower_app(launcher):
    out = launcher.run(ROOT / "simulations/quickstart", {"num-server-rounds": 3}, num_supernodes=4)
    assert out.ok, out.output[-3000:]
    accuracy = float(re.search(r"final accuracy (\S+)", out.output).group(1))
    assert accuracy > 0.8  # digits MLP after 3 robust rounds (about 0.93 seen); chance is 0.1
    assert "excluded reply" not in out.output


def test_readme_shows_the_tested_quickstart_code():
    source = (ROOT / "simulations/quickstart/quickstart/server_app.py").read_text()
    snippet = source.split("# --8<-- [start:strategy]\n")[1].split("    # --8<-- [end:strategy]")[0]
    readme = (ROOT / "README.md").read_text()
    assert "\n".join(line[4:] for line in snippet.splitlines()) in readme


def test_paper_app_trains_and_writes_results(launcher, tmp_path):
    config = {"task": "mnist-logreg", "rounds": 4, "num-byzantine": 1, "eval-every": 2, "eval-size": 1000,
              "lr": 0.7, "results-dir": str(tmp_path)}
    out = launcher.run(ROOT / "simulations/paper", config, num_supernodes=5)
    assert out.ok, out.output[-3000:]
    settings, rows = read_run(tmp_path / "mnist-logreg_nnm+cm_none_f1_a0.1_s1.jsonl")
    assert settings["rounds"] == 4 and [r["round"] for r in rows] == [0, 2, 4]
    assert rows[-1]["robust-received"] == 4 and rows[-1]["robust-excluded"] == 0
    assert rows[-1]["test-accuracy"] > rows[0]["test-accuracy"] + 0.2
