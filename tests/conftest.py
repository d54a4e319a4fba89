"""Shared fixtures: a private local SuperLink for real `flwr run` tests."""

from pathlib import Path

import pytest

from flwr_byz.runs.launcher import FlowerLauncher

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def launcher(tmp_path_factory):
    """`flwr run` on a SuperLink of our own (own FLWR_HOME, ports, Ray dir), stopped at the end."""
    with FlowerLauncher(tmp_path_factory.mktemp("flwr-home")) as fl:
        yield fl
