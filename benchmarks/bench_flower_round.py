"""Per-round cost of the paper app under `flwr run`: compute vs framework overhead, and peak memory.

    python benchmarks/bench_flower_round.py [--task mnist] [--nodes 15] [--rounds 20]

* wall per round: one run evaluating (on 100 test images) every round; the results file's
  ``elapsed`` column gives ``(elapsed[R] - elapsed[1]) / (R - 1)``, which leaves out start-up
  (SuperLink, Ray, imports) and the first round's warm-up.
* compute per round: the same work in this process, with no Flower: the n - f honest
  ``worker_step`` calls the clients make (one torch thread each, spread over as many parallel
  workers as Flower's Ray backend runs: one per core at ``num-cpus=1`` per client) plus the
  server's robust aggregation, timed over a few rounds.
* overhead = wall - compute, reported as a ratio of compute. Both runs use the same machine, so
  the ratio is meaningful even when absolute times are noisy.
* peak memory: the largest total PSS (resident memory, shared pages split) of the run's processes (those whose
  environment carries this run's ``FLWR_HOME``: SuperLink, ServerApp, Ray workers), sampled
  every 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import torch

from flwr_byz.aggregation import get_aggregator
from flwr_byz.clients.nodes import honest_partitions
from flwr_byz.config import RunSettings
from flwr_byz.experiments.flower import FlowerLauncher
from flwr_byz.experiments.results import read_run, results_path
from flwr_byz.tasks import worker_step

APP = Path(__file__).resolve().parents[1] / "simulations" / "paper"


def run_memory(marker: bytes) -> int:
    """Total proportional set size (bytes: shared pages split among their users) of the
    processes whose environment contains ``marker``."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker not in (proc / "environ").read_bytes():
                continue
            rollup = (proc / "smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


class PeakMemory:
    """Largest total PSS of one run's processes while the context is open."""

    def __init__(self, flwr_home: Path) -> None:
        self.marker = f"FLWR_HOME={flwr_home}".encode()
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, run_memory(self.marker))
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def compute_per_round(settings: RunSettings, nodes: int, rounds: int = 3) -> float:
    """Seconds per round of the honest steps (one thread each, spread over the cores as Ray
    spreads the clients) and the aggregation, in this process."""
    h = nodes - settings.num_byzantine
    task, x, y, parts = honest_partitions(settings, h)
    data = [(x[torch.as_tensor(p)], y[torch.as_tensor(p)]) for p in parts]
    aggregator = get_aggregator(settings.aggregation, settings.num_byzantine)
    torch.manual_seed(0)
    model = task.build_model()
    momentum: list[torch.Tensor | None] = [None] * h
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    worker_step(task, model, *data[0], None, settings.worker(), 0, 0, 1)  # warm-up
    start = time.perf_counter()
    for t in range(1, rounds + 1):
        for i, (xi, yi) in enumerate(data):
            momentum[i] = worker_step(task, model, xi, yi, momentum[i], settings.worker(), 0, i, t).momentum
    steps = (time.perf_counter() - start) / rounds
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for _ in range(rounds):
        aggregator(torch.stack([m for m in momentum if m is not None]))
    return steps / min(os.cpu_count() or 1, h) + (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mnist")
    parser.add_argument("--nodes", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    config = {"task": args.task, "attack": "none", "rounds": args.rounds, "eval-every": 1, "eval-size": 100}

    with tempfile.TemporaryDirectory() as tmp, FlowerLauncher(Path(tmp) / "home") as launcher:
        with PeakMemory(launcher.home) as memory:
            outcome = launcher.run(APP, {**config, "results-dir": tmp}, num_supernodes=args.nodes)
        if not outcome.ok:
            raise SystemExit(f"run failed ({outcome.status}):\n{outcome.output[-2000:]}")
        settings = RunSettings.from_run_config(config)
        elapsed = {row["round"]: row["elapsed"] for row in read_run(results_path(
            RunSettings.from_run_config({**config, "results-dir": tmp})))[1]}
    wall = (elapsed[args.rounds] - elapsed[1]) / (args.rounds - 1)
    compute = compute_per_round(settings, args.nodes)
    overhead = wall - compute
    print(f"{args.task}, {args.nodes} nodes ({args.nodes - settings.num_byzantine} honest), CPU, "
          f"torch threads {torch.get_num_threads()}, {args.rounds} rounds")
    print(f"{'wall per round':<28}{wall * 1000:>10.0f} ms   (rounds 2..{args.rounds}, from the results file)")
    print(f"{'compute per round':<28}{compute * 1000:>10.0f} ms   (honest steps over {os.cpu_count()} cores + aggregation)")
    print(f"{'framework overhead':<28}{overhead * 1000:>10.0f} ms   = {overhead / compute:.2f} x compute")
    print(f"{'peak memory of the run':<28}{memory.peak / 2**20:>10.0f} MiB  (PSS of all its processes)")


if __name__ == "__main__":
    main()
