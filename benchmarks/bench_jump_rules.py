"""JUMP's time per round against given rules, through the engine's ``Simulation`` (in process, 1 torch thread).

For each rule: ``--rounds`` rounds of the task (12 honest + 3 Byzantine nodes, alpha 0.1, momentum 0.9, seed 1)
under JUMP; printed: the median over rounds 2..R of the attack's seconds and of its candidate aggregates'
(``jump-aggregate-seconds``), the last round's wall time, JUMP's lambdas, and the norm of the final model. Run it
in checkouts of two revisions (``git worktree add``) to compare a change: equal lambdas and norms mean the same
attack, the seconds what it cost.

    python benchmarks/bench_jump_rules.py --task mnist --rules fltrust,dnc --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flwr_byz.engine.simulation import Simulation
from flwr_byz.settings import RunSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mnist")
    parser.add_argument("--rules", default="fltrust,dnc", help="comma-separated aggregation specs")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'rule':<12} {'attack s':>9} {'aggregate s':>12} {'round s':>8}  lambdas, final model norm")
    for rule in args.rules.split(","):
        settings = RunSettings.from_run_config({"task": args.task, "aggregation": rule, "num-byzantine": 3,
                                                "attack": "jump", "alpha": 0.1, "seed": 1, "rounds": args.rounds,
                                                "momentum": 0.9})
        sim = Simulation(settings, 15, "cpu")
        attack, aggregate, lams, wall = [], [], [], 0.0
        for _ in range(args.rounds):
            start = time.perf_counter()
            done = sim.step()
            wall = time.perf_counter() - start
            attack.append(done.metrics["attack-seconds"])
            aggregate.append(done.metrics["jump-aggregate-seconds"])
            lams.append(round(done.metrics["jump-lambda"], 4))
        norm = float(torch.cat([v.flatten().double() for v in sim.state.values()]).norm())
        print(f"{rule:<12} {statistics.median(attack[1:]):>9.2f} {statistics.median(aggregate[1:]):>12.2f} "
              f"{wall:>8.2f}  {lams}, {norm:.6f}")


if __name__ == "__main__":
    main()
