"""Plans and runs a grid (:class:`~flwr_byz.runs.grid.Sweep`) into the results store: engine runs as Ray tasks
(local Ray, or a cluster at ``address``), Flower runs one at a time through `flwr run` of a Flower app (the
paper's, or an audited user's app); a live progress bar; finished runs skipped, failures recorded (and printed
with their error), interruptions clean. ``flwr-byz sweep``, ``stress``, ``tradeoff`` and ``audit`` all run here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flwr_byz.flower.paper import APP_DIR
from flwr_byz.results import PARTIAL, results_dir, results_path
from flwr_byz.runs import store
from flwr_byz.runs.grid import Sweep
from flwr_byz.runs.launcher import ANSI, FlowerLauncher, RunOutcome, signals_ignored, tail, terminated_as_interrupt
from flwr_byz.settings import RunSettings

PAPER_APP = APP_DIR
FLOWER_RUN_TIMEOUT = 7 * 24 * 3600.0  # a Flower run of a sweep is stopped only if it hangs for a week
PROGRESS = re.compile(r"\] round \d+/\d+: test accuracy|Results written|Error|error:")


@dataclass
class Outcome:
    """What a sweep did: runs finished now, skipped (already finished), failed now, and failed before
    (left alone without ``retry_failed``)."""

    finished: list[Any] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)
    failed: list[Any] = field(default_factory=list)
    failed_before: list[Any] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many runs finished now, before, failed now and before."""
        return (f"finished now {len(self.finished)}, already finished {len(self.skipped)}, "
                f"failed {len(self.failed)}" + (f", failed before (not retried: add --retry-failed) "
                                                f"{len(self.failed_before)}" if self.failed_before else ""))

    def failures(self) -> str | None:
        """The failed runs by full name and where their errors are, or None if none failed now."""
        if not self.failed:
            return None
        first = self.failed[0]
        where = f"records and logs: {store.failure_path(first).parent}"
        if len(self.failed) == 1:
            log = store.log_path(first)
            where = f"full log: {log}" if log.exists() else f"record: {store.failure_path(first)}"
        return (f"{len(self.failed)} of {len(self.failed) + len(self.finished)} runs failed: "
                f"{', '.join(store.label(r) for r in self.failed)} (error{'s' * (len(self.failed) > 1)} above; "
                f"{where})")


def plan(sweep: Sweep, retry_failed: bool = False) -> tuple[list[Any], Outcome]:
    """The runs to execute now (the pending ones, and with ``retry_failed`` the failed ones too) and the others."""
    if sweep.honest is not None:
        for folder in {results_dir(s) for s in sweep.runs}:
            store.claim(folder, sweep.honest)
    outcome, todo = Outcome(), []
    for run in sweep.runs:
        state = store.status(run)
        if state == "finished":
            outcome.skipped.append(run)
        elif state == "pending" or retry_failed:
            todo.append(run)
        else:
            outcome.failed_before.append(run)
    return todo, outcome


_warm = False  # whether this process (a Ray worker) ran its untimed warm-up


def execute(settings: dict, nodes: int, checkpoint_every: int, threads: int, warm_up: bool = False) -> str:
    """One engine run (a Ray task's body): its results file."""
    global _warm
    import torch

    from flwr_byz.engine import run

    torch.set_num_threads(threads)
    settings = RunSettings.from_run_config(settings)
    if warm_up and not _warm:
        with tempfile.TemporaryDirectory() as tmp:
            run(dataclasses.replace(settings, rounds=min(2, settings.rounds), results_dir=tmp), nodes=nodes)
        _warm = True
    return str(run(settings, nodes=nodes, checkpoint_every=checkpoint_every))


def echo_rows(settings: RunSettings, shown: int) -> int:
    """Print the evaluated rounds a running (or just finished) engine run wrote after the first ``shown``, as
    the engine logs them; the number of rows shown now."""
    path = results_path(settings)
    for written in (path.with_name(path.name + PARTIAL), path):
        try:
            lines = written.read_text().split("\n")[1:-1]  # the header, and a line still being written, aside
        except OSError:
            continue
        rows = [row for row in map(json.loads, lines) if "complete" not in row]
        for row in rows[shown:]:
            accuracy, loss = (float("nan") if row.get(k) is None else row[k] for k in ("test-accuracy", "test-loss"))
            print(f"    [{settings.name}] round {row['round']}/{settings.rounds}: test accuracy {accuracy:.4f}, "
                  f"test loss {loss:.4f}", flush=True)
        return max(shown, len(rows))
    return shown


class FlowerProgress:
    """A `flwr run` output sink that copies its progress lines (evaluations, errors) to stdout."""

    def write(self, line: str) -> None:
        if PROGRESS.search(line):
            sys.stdout.write("    " + ANSI.sub("", line).split("INFO :")[-1].strip() + "\n")

    def flush(self) -> None:
        sys.stdout.flush()


class FlowerApp(Protocol):
    """What the ``flower`` executor runs: an app ``folder`` given each run's run config; ``collect`` stores the
    run from `flwr run`'s outcome and returns its error (None: it succeeded)."""

    folder: Path
    timeout: float

    def run_config(self, run: Any) -> dict[str, Any]: ...

    def collect(self, run: Any, outcome: RunOutcome, seconds: float) -> str | None: ...


@dataclass(frozen=True)
class PaperApp:
    """The paper's app: a run's settings are its run config, and the app writes the run's results file."""

    folder: Path
    timeout: float = FLOWER_RUN_TIMEOUT

    def run_config(self, run: RunSettings) -> dict[str, Any]:
        return run.to_run_config()

    def collect(self, run: RunSettings, outcome: RunOutcome, seconds: float) -> str | None:
        return None if outcome.ok else f"flwr run ended {outcome.status}:\n{tail(outcome.output)}"


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[running]} running, {task.fields[failed]} failed"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())


def run_sweep(sweep: Sweep, planned: tuple[list[Any], Outcome], address: str | None = None,
              cpus_per_run: float = 1, gpus_per_run: float = 0, threads: int | None = None, echo: bool = False,
              launcher: FlowerLauncher | None = None) -> Outcome:
    """Execute the runs :func:`plan` chose (``planned``); failures are recorded, printed on stderr with their
    error, and do not stop the others.

    Engine runs are Ray tasks requesting ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (fractions allowed),
    each at ``threads`` torch threads (default: ``max(1, int(cpus_per_run))``), as many at once as the
    cluster's resources allow. Flower runs go through `flwr run` of ``sweep.app`` (default: the paper's app) on
    ``launcher`` (default: a private SuperLink for this call), each client with ``gpus_per_run`` GPUs.
    ``echo``: the runs' progress lines (evaluated rounds) on stdout too. Ctrl-C or SIGTERM cancels the running
    runs and shuts down the Ray or SuperLink this call started; finished runs and checkpoints stay, so the same
    call resumes.
    """
    todo, outcome = planned
    if not todo:
        return outcome
    with terminated_as_interrupt():
        if sweep.executor == "flower":
            _flower(sweep, todo, outcome, gpus_per_run, echo, launcher)
        else:
            _ray(sweep, todo, outcome, address, cpus_per_run, gpus_per_run, threads or max(1, int(cpus_per_run)),
                 echo)
    return outcome


def _settle(outcome: Outcome, run: Any, error: str | None, bar: Progress, seconds: float,
            log: str | None = None) -> None:
    """Record the run's outcome and say so: a line above the bar when it finished; when it failed, its full
    name, its error's last lines and where its record and whole output (``log``) are kept, on stderr."""
    if error is None and store.status(run) == "finished":
        store.clear_failure(run)
        outcome.finished.append(run)
        bar.console.print(f"finished {store.label(run)} in {seconds:.0f} s", highlight=False)
        return
    error = error or "the run ended without a complete results file"
    path = store.record_failure(run, error, log)
    outcome.failed.append(run)
    where = f"{path}" + (f"; full log: {store.log_path(run)}" if log is not None else "")
    print(f"FAILED {store.label(run)} after {seconds:.0f} s:\n{textwrap.indent(tail(error), '  ')}\n"
          f"  ({where})", file=sys.stderr, flush=True)


def _ray(sweep: Sweep, todo: list[RunSettings], outcome: Outcome, address: str | None, cpus: float, gpus: float,
         threads: int, echo: bool) -> None:
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
    shown: dict[str, int] = {}  # rows echoed per run
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
                                      threads, sweep.warm_up)
                    running[ref] = settings, time.monotonic()
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for settings, _ in running.values() if echo else ():
                    shown[settings.key] = echo_rows(settings, shown.get(settings.key, 0))
                for ref in ready:
                    settings, start = running.pop(ref)
                    if echo:  # the rows written since the last look
                        echo_rows(settings, shown.pop(settings.key, 0))
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


def _flower(sweep: Sweep, todo: list[Any], outcome: Outcome, gpus: float, echo: bool,
            launcher: FlowerLauncher | None) -> None:
    app: FlowerApp = sweep.app or PaperApp(PAPER_APP)
    home = store.location(todo[0])[0].parent / ".flwr-home"
    own = contextlib.nullcontext(launcher) if launcher is not None else FlowerLauncher(home)  # stopped on exit
    with own as fl, progress_bar() as bar:
        job = bar.add_task(sweep.name, total=len(todo), running=1, failed=0)
        for i, run in enumerate(todo, 1):
            start, log = time.time(), None
            try:
                result = fl.run(app.folder, app.run_config(run), num_supernodes=sweep.nodes(run), num_gpus=gpus,
                                timeout=app.timeout, echo=FlowerProgress() if echo else None)
                error = app.collect(run, result, time.time() - start)
                log = result.output
            except Exception:  # noqa: BLE001 - recorded with the run, the others go on
                error = traceback.format_exc()
            _settle(outcome, run, error, bar, time.time() - start, log)
            bar.update(job, advance=1, failed=len(outcome.failed), running=int(i < len(todo)))

