"""The ServerApp of flwr-byz simulations: Robust D-SGD under an omniscient adversary."""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from flwr_byz.settings import RunSettings
from flwr_byz.results import RunLog
from flwr_byz.flower import OmniscientAdversary, RobustStrategy
from flwr_byz.flower.records import to_record
from flwr_byz.tasks import Task, get_task
from flwr_byz.node_data import TrustedUpdate, evaluated, test_set

app = ServerApp()


def wait_for_nodes(grid: Grid, timeout: float = 120.0) -> int:
    """Number of nodes once it has been stable for a second."""
    start, count, stable_since = time.time(), -1, time.time()
    while time.time() - start < timeout:
        now = len(list(grid.get_node_ids()))
        if now != count:
            count, stable_since = now, time.time()
        elif count > 0 and time.time() - stable_since >= 1.0:
            return count
        time.sleep(0.2)
    raise RuntimeError(f"no stable set of nodes after {timeout} s (last count {count})")


def central_evaluator(settings: RunSettings, task: Task, adversary: OmniscientAdversary, log_: RunLog):
    """``evaluate_fn`` for ``Strategy.start``: test loss/accuracy every ``eval-every`` rounds,
    written with the round's honest training metrics and the seconds ``elapsed`` since the
    strategy started to the results file."""
    start = time.time()
    x, y = test_set(settings)
    model = task.build_model()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if not evaluated(settings, server_round):
            return None
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = task.evaluate(model, x, y)
        train = dict(adversary.train_metrics.get(server_round, {}))
        log_.append({"round": server_round, "test-loss": loss, "test-accuracy": accuracy, **train,
                     "elapsed": round(time.time() - start, 3)})
        log(INFO, "[%s] round %d/%d: test accuracy %.4f, test loss %.4f", settings.name, server_round,
            settings.rounds, accuracy, loss)
        return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})

    return evaluate


def root_trainer(settings: RunSettings) -> Callable[[ArrayRecord, ConfigRecord], ArrayRecord]:
    """``RobustStrategy``'s ``root_train``: the server's step on its root set (:class:`TrustedUpdate`, as the
    engine takes it) from the round's global model, with the round's client step."""
    trusted = TrustedUpdate(settings)

    def train(arrays: ArrayRecord, config: ConfigRecord) -> ArrayRecord:
        return to_record(trusted(arrays.to_torch_state_dict(), int(config["server-round"]), float(config["lr"])))

    return train


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(context.run_config)
    if settings.planning:
        raise ValueError(f"attack {settings.attack!r} with jump-tau={settings.jump_tau} plans ahead on the whole "
                         "simulation state, which only the in-process engine has: flwr-byz stress --executor engine")
    n = wait_for_nodes(grid)
    settings.check_nodes(n)
    task = get_task(settings.task)
    torch.manual_seed(settings.seed)
    model = task.build_model()
    sampled = settings.fraction_train < 1  # otherwise every node trains every round (the paper's setting)
    strategy = RobustStrategy(
        aggregation=settings.aggregation, f=settings.aggregation_f, server_lr=settings.server_lr,
        aggregation_params=settings.aggregation_kwargs, lr_schedule=settings.lr_at, fraction_evaluate=0.0,
        fraction_train=settings.fraction_train, min_train_nodes=settings.aggregator().min_n() if sampled else n,
        min_available_nodes=n, sampling_seed=settings.seed if sampled else None,
        root_train=root_trainer(settings) if settings.root_size else None,
    )
    adversary = OmniscientAdversary(strategy, attack=settings.attack != "none", seed=settings.seed)
    adversary.discover_roles(grid)  # the nodes' partition ids, before round 1's sample
    strategy.node_key = adversary.rank  # the same sample in every run of these settings, whatever the node ids
    log_ = RunLog.of(settings)
    log(INFO, "Results of %s go to %s", settings.name, log_.path)
    start = time.time()
    adversary.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=settings.rounds,
        train_config=ConfigRecord({"lr": settings.lr}),
        evaluate_fn=central_evaluator(settings, task, adversary, log_),
    )
    log(INFO, "Results written to %s", log_.finish(seconds=round(time.time() - start, 3)))
