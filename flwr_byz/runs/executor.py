"""Runs a sweep: engine runs as Ray tasks (local Ray, or a cluster at ``address``), Flower runs one at a time
through `flwr run`; a live progress bar; finished runs skipped, failures recorded, interruptions clean."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flwr_byz.settings import RunSettings
from flwr_byz.runs import store
from flwr_byz.runs.launcher import FlowerLauncher, signals_ignored, terminated_as_interrupt
from flwr_byz.results import results_dir
from flwr_byz.flower.paper import APP_DIR
from flwr_byz.runs.grid import Sweep

PAPER_APP = APP_DIR
FLOWER_RUN_TIMEOUT = 7 * 24 * 3600.0  # a Flower run of a sweep is stopped only if it hangs for a week


@dataclass
class Outcome:
    """What a sweep did: runs finished now, skipped (already finished), failed now, and failed before
    (left alone without ``retry_failed``)."""

    finished: list[RunSettings] = field(default_factory=list)
    skipped: list[RunSettings] = field(default_factory=list)
    failed: list[RunSettings] = field(default_factory=list)
    failed_before: list[RunSettings] = field(default_factory=list)


def plan(sweep: Sweep, retry_failed: bool = False) -> tuple[list[RunSettings], Outcome]:
    """The runs to execute now (the pending ones, and with ``retry_failed`` the failed ones too) and the others."""
    for folder in {results_dir(s) for s in sweep.runs}:
        store.claim(folder, sweep.honest)
    outcome, todo = Outcome(), []
    for settings in sweep.runs:
        state = store.status(settings)
        if state == "finished":
            outcome.skipped.append(settings)
        elif state == "pending" or retry_failed:
            todo.append(settings)
        else:
            outcome.failed_before.append(settings)
    return todo, outcome


def execute(settings: dict, nodes: int, checkpoint_every: int, threads: int) -> str:
    """One engine run (a Ray task's body): its results file."""
    import torch

    from flwr_byz.engine import run

    torch.set_num_threads(threads)
    return str(run(RunSettings.from_run_config(settings), nodes=nodes, checkpoint_every=checkpoint_every))


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[running]} running, {task.fields[failed]} failed"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())


def run_sweep(sweep: Sweep, planned: tuple[list[RunSettings], Outcome], address: str | None = None,
              cpus_per_run: float = 1, gpus_per_run: float = 0, threads: int | None = None) -> Outcome:
    """Execute the runs :func:`plan` chose (``planned``); failures are recorded and do not stop the others.

    Engine runs are Ray tasks requesting ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (fractions allowed),
    each at ``threads`` torch threads (default: ``max(1, int(cpus_per_run))``), as many at once as the
    cluster's resources allow. Ctrl-C or SIGTERM cancels the running tasks and shuts down the Ray this call
    started; finished runs and checkpoints stay, so the same call resumes.
    """
    todo, outcome = planned
    if not todo:
        return outcome
    with terminated_as_interrupt():
        if sweep.executor == "flower":
            _flower(sweep, todo, outcome, gpus_per_run)
        else:
            _ray(sweep, todo, outcome, address, cpus_per_run, gpus_per_run, threads or max(1, int(cpus_per_run)))
    return outcome


def _settle(outcome: Outcome, settings: RunSettings, error: str | None, bar: Progress, seconds: float) -> None:
    """Record the run's outcome and print a line for it (above the bar on a terminal; the log otherwise)."""
    if error is None and store.status(settings) == "finished":
        store.clear_failure(settings)
        outcome.finished.append(settings)
        bar.console.print(f"finished {settings.name} ({settings.key}) in {seconds:.0f} s", highlight=False)
    else:
        path = store.record_failure(settings, error or "the run ended without a complete results file")
        outcome.failed.append(settings)
        bar.console.print(f"FAILED {settings.name} ({settings.key}) after {seconds:.0f} s: {path}", highlight=False)


def _ray(sweep: Sweep, todo: list[RunSettings], outcome: Outcome, address: str | None, cpus: float, gpus: float,
         threads: int) -> None:
    import ray

    tmp = None
    if address is None:  # Ray's socket paths must stay under 107 bytes: a short temp dir
        tmp = tempfile.mkdtemp(prefix="flwr-byz-ray-", dir="/tmp")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _temp_dir=tmp,
                 configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    task = ray.remote(execute).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    queue: list[RunSettings] = list(todo)
    running: dict[object, tuple[RunSettings, float]] = {}
    try:
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // cpus) if cpus else len(todo)
        if gpus:
            slots = min(slots, int(resources.get("GPU", 0) // gpus))
        if slots < 1:
            raise ValueError(f"the Ray cluster ({resources.get('CPU', 0)} CPUs, {resources.get('GPU', 0)} GPUs) "
                             f"cannot fit one run of {cpus} CPUs and {gpus} GPUs: lower --cpus-per-run / "
                             "--gpus-per-run")
        with progress_bar() as bar:
            job = bar.add_task(sweep.name, total=len(todo), running=0, failed=0)
            while queue or running:
                while queue and len(running) < slots:
                    settings = queue.pop(0)
                    ref = task.remote(settings.to_run_config(), sweep.nodes(settings), sweep.checkpoint_every,
                                      threads)
                    running[ref] = settings, time.monotonic()
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in ready:
                    settings, start = running.pop(ref)
                    try:
                        ray.get(ref)
                        error = None
                    except Exception as err:  # noqa: BLE001 - recorded with the run, the others go on
                        error = f"{type(err).__name__}: {err}"
                    _settle(outcome, settings, error, bar, time.monotonic() - start)
                    bar.advance(job)
                bar.update(job, running=len(running), failed=len(outcome.failed))
    finally:
        with signals_ignored():  # a second Ctrl-C must not cut the cleanup short
            for ref in running:
                ray.cancel(ref, force=True)
            ray.shutdown()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def _flower(sweep: Sweep, todo: list[RunSettings], outcome: Outcome, gpus: float) -> None:
    home = results_dir(todo[0]) / ".flwr-home"
    with FlowerLauncher(home) as launcher, progress_bar() as bar:
        job = bar.add_task(sweep.name, total=len(todo), running=1, failed=0)
        for settings in todo:
            start = time.time()
            try:
                result = launcher.run(PAPER_APP, settings.to_run_config(), num_supernodes=sweep.nodes(settings),
                                      num_gpus=gpus, timeout=FLOWER_RUN_TIMEOUT)
                error = None if result.ok else f"flwr run ended {result.status}:\n{result.output[-4000:]}"
            except Exception:  # noqa: BLE001 - recorded with the run, the others go on
                error = traceback.format_exc()
            _settle(outcome, settings, error, bar, time.time() - start)
            bar.update(job, advance=1, failed=len(outcome.failed))
