"""Run settings: the app's pyproject defaults, the tasks' paper values, override files, errors."""

import tomllib

import pytest
import torch

from conftest import ROOT
from flwr_byz.settings import RunSettings, parse_params
from flwr_byz.tasks import LossSampling, get_task

APP = ROOT / "simulations/paper"
APP_CONFIG = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_app_defaults_are_the_settings_defaults():
    assert RunSettings.from_run_config(APP_CONFIG) == RunSettings()
    assert set(APP_CONFIG) == set(RunSettings().to_run_config())


@pytest.mark.parametrize("task, expected", [
    # paper Table 2 (MNIST, CIFAR-10), Table 3 (logistic regression), section 4 (toy2d)
    ("mnist", dict(lr=0.1, lr_milestone=0, batch_size=32, clip=2.0, l2=1e-4, rounds=800, momentum=0.9)),
    ("cifar10", dict(lr=0.25, lr_milestone=1000, lr_gamma=0.1, batch_size=64, clip=5.0, l2=1e-2, rounds=1500,
                     momentum=0.9)),
    ("mnist-logreg", dict(lr=0.7, batch_size=32, clip=2.0, l2=0.0, rounds=640, momentum=0.9)),
    ("toy2d", dict(lr=1.2, batch_size=1, clip=0.0, l2=0.0, rounds=100, momentum=0.0)),
])
def test_the_app_trains_each_task_with_its_paper_values(task, expected):
    settings = RunSettings.from_run_config({**APP_CONFIG, "task": task})  # what `--run-config task=...` gives
    assert {k: getattr(settings, k) for k in expected} == expected


def test_jump_samples_follow_the_task_unless_set():
    for task in ("mnist", "cifar10", "mnist-logreg"):
        settings = RunSettings.from_run_config({**APP_CONFIG, "task": task})
        assert (settings.jump_loss_size, settings.jump_screen_size) == get_task(task).jump_sample
    mine = RunSettings.from_run_config({**APP_CONFIG, "jump-loss-size": 100, "jump-screen-precision": "bfloat16"})
    assert mine.loss_sampling() == LossSampling(100, min(get_task("mnist").jump_sample[1], 100), torch.bfloat16)


def test_cifar_schedule_and_overrides_win():
    settings = RunSettings.from_run_config({**APP_CONFIG, "task": "cifar10"})
    assert settings.lr_at(1000) == 0.25 and settings.lr_at(1001) == pytest.approx(0.025)
    assert settings.worker().clip == 5.0 and settings.worker().batch_size == 64
    tuned = RunSettings.from_run_config({**APP_CONFIG, "task": "cifar10", "lr": 0.1, "clip": 0})
    assert tuned.lr_at(1) == 0.1 and tuned.worker().clip is None and tuned.l2 == 1e-2


@pytest.mark.parametrize("name", ["cifar10", "mnist-logreg", "toy2d"])
def test_override_files_only_use_known_keys(name):
    overrides = tomllib.loads((APP / "configs" / f"{name}.toml").read_text())
    assert RunSettings.from_run_config({**APP_CONFIG, **overrides}).task == name


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown run-config key 'num_byzantines'.*num-byzantine"):
        RunSettings.from_run_config({"num_byzantines": 3})


def test_values_are_coerced_and_special_values_mean_off():
    settings = RunSettings.from_run_config({"num-byzantine": "5", "alpha": 0, "clip": 0})
    assert settings.num_byzantine == 5 and settings.alpha_or_iid is None and settings.worker().clip is None
    assert settings.name == "mnist_nnm+cm_none_f5_iid_s1"


def test_the_defence_f_is_its_own_key():
    assert RunSettings(num_byzantine=2).aggregation_f == 2  # auto
    settings = RunSettings.from_run_config({"num-byzantine": 1, "aggregation-f": 3, "aggregation": "nnm+tm"})
    assert (settings.num_byzantine, settings.aggregator().f) == (1, 3)


def test_stage_and_attack_parameters():
    settings = RunSettings(aggregation="bucketing+nnm+gm", aggregation_params="nu=0.2, s=3, start=median",
                           attack="foe", attack_params="eps=2")
    agg = settings.aggregator()
    assert agg.rule.nu == 0.2 and agg.rule.start == "median" and agg.pre[0].s == 3
    assert settings.make_attack().eps == 2
    assert RunSettings(attack="jump", attack_params="solver=powell").make_attack().solver.start == 1.0
    assert parse_params(" a=1, b=2.5 , c=true, d='x' ", "k") == {"a": 1, "b": 2.5, "c": True, "d": "x"}


@pytest.mark.parametrize("key, value, message", [
    ("task", "mnist2", "unknown task"), ("attack", "jmup", "unknown attack"),
    ("aggregation", "nnm+median", "unknown aggregation rule"), ("rounds", 0, "rounds must be at least 1"),
    ("jump-solver", "powell", "unknown run-config key 'jump-solver'; valid keys: task, "),
    ("aggregation-params", "nu=0.2", r"not accepted by 'nnm\+cm'; valid parameters: none"),
    ("aggregation-params", "nu", "expected comma-separated key=value pairs"),
    ("rounds", 2.5, "needs an int or 'auto', got 2.5"), ("lr", "fast", "needs a float or 'auto'"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("jump-screen-size", 4096, r"need size >= 1 and 0 <= screen <= size, got size=\d+, screen=4096"),
    ("jump-screen-precision", "fp8", "unknown jump-screen-precision 'fp8'; valid: float32, bfloat16"),
])
def test_impossible_settings_fail_at_once(key, value, message):
    with pytest.raises(ValueError, match=message):
        RunSettings.from_run_config({key: value})


@pytest.mark.parametrize("attack, params, message", [
    ("foe", "eps=inf", "eps must be finite"), ("gaussian", "sigma=-1", "sigma must be finite and >= 0"),
    ("mimic", "warmup=0", "warmup must be >= 1"), ("minmax", "tol=0", "need tol > 0"),
    ("alie", "zz=1", r"unknown parameters \['zz'\]; valid: \['z'\]"),
    ("jump", "inlier_points=-1", "inlier_points, rounds, piece_ends >= 0"),
    ("jump", "max_batch_elems=0", "jump: max_batch_elems must be a positive integer, got 0"),
    ("jump", "finalists=0", "jump: finalists must be a positive integer, got 0"),
    ("jump", "solver=glob", r"jump: unknown solver 'glob'; valid: \['global', 'powell'\]"),
])
def test_attack_parameters_out_of_range_fail_at_once(attack, params, message):
    with pytest.raises(ValueError, match=message):
        RunSettings.from_run_config({"attack": attack, "attack-params": params})


def test_gm_parameter_out_of_range_fails_at_once():
    with pytest.raises(ValueError, match="GM needs nu > 0"):
        RunSettings.from_run_config({"aggregation": "nnm+gm", "aggregation-params": "nu=0"})


def test_a_rule_starved_by_silent_byzantine_nodes_fails_at_once():
    """With ``attack = "none"`` the Byzantine nodes send nothing: Bulyan with f = 3 gets 12 replies where it needs
    15, and would keep the initial model every round; the engine and the paper app refuse such a run up front."""
    from flwr_byz.engine.simulation import Simulation

    def settings(aggregation: str, attack: str) -> RunSettings:
        return RunSettings.from_run_config({"task": "mnist-logreg", "aggregation": aggregation, "num-byzantine": 3,
                                            "attack": attack})

    message = (r"BULYAN needs n >= 4f \+ 3, got n=12, f=3.*With attack='none' the 3 Byzantine nodes stay silent and "
               r"the server receives 12 replies a round: for a no-attack baseline of this rule, set num-byzantine=0 "
               r"and aggregation-f=3 on 15 honest nodes")
    with pytest.raises(ValueError, match=message):
        settings("bulyan", "none").check_nodes(15)
    with pytest.raises(ValueError, match=message):
        Simulation(settings("bulyan", "none"), 15, "cpu")
    settings("bulyan", "sf").check_nodes(15)  # all 15 reply
    settings("nnm+cm", "none").check_nodes(15)  # 12 replies > 2f
    with pytest.raises(ValueError, match=r"got n=14, f=3: use at least n=15"):
        settings("bulyan", "sf").check_nodes(14)
