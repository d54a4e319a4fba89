"""Run settings: the app's pyproject defaults, override files, parsing errors."""

import tomllib

import pytest

from conftest import ROOT
from flwr_byz.config import RunSettings

APP = ROOT / "simulations/paper"


def test_app_defaults_are_the_settings_defaults():
    config = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert config == RunSettings().to_run_config()
    assert RunSettings.from_run_config(config) == RunSettings()


@pytest.mark.parametrize("name", ["cifar10", "mnist-logreg", "toy2d"])
def test_override_files_only_use_known_keys(name):
    overrides = tomllib.loads((APP / "configs" / f"{name}.toml").read_text())
    settings = RunSettings.from_run_config(overrides)
    assert settings.task == name


def test_cifar_schedule_and_paper_values():
    settings = RunSettings.from_run_config(tomllib.loads((APP / "configs/cifar10.toml").read_text()))
    assert settings.lr_at(1000) == 0.25 and settings.lr_at(1001) == pytest.approx(0.025)
    assert settings.worker().clip == 5.0 and settings.worker().batch_size == 64


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown run-config key 'num_byzantines'.*num-byzantine"):
        RunSettings.from_run_config({"num_byzantines": 3})


def test_values_are_coerced_and_special_values_mean_off():
    settings = RunSettings.from_run_config({"num-byzantine": "5", "alpha": 0, "clip": 0})
    assert settings.num_byzantine == 5 and settings.alpha_or_iid is None and settings.worker().clip is None
    assert settings.name == "mnist_nnm+cm_none_f5_iid_s1"


@pytest.mark.parametrize("key, value, message", [
    ("task", "mnist2", "unknown task"), ("attack", "jmup", "unknown attack"),
    ("aggregation", "nnm+median", "unknown aggregation rule"), ("rounds", 0, "rounds must be at least 1"),
])
def test_impossible_settings_fail_at_once(key, value, message):
    with pytest.raises(ValueError, match=message):
        RunSettings.from_run_config({key: value})
