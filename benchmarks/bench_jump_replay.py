"""Equal damage, shown: JUMP's searches compared from the same recorded states of a real run.

    python benchmarks/bench_jump_replay.py [--task mnist] [--aggregation nnm+cm] [--rounds 48] [--every 2]
    python benchmarks/bench_jump_replay.py --curves 1,2,3 --curve-rounds 30

1. Replay. A real Robust D-SGD run of the task's CNN (12 honest nodes + f = 3 Byzantine,
   the paper app's settings, in this process: ``flwr_byz.studies.replay.simulate``)
   under JUMP's default records every ``--every``-th round: the model, the honest
   vectors, the server step; the data are the run's partitions. From each recorded
   state every variant below picks its lambda with its own honest-loss oracle, and
   the model after the update is scored on a held-out honest sample (``--heldout``
   examples, equal weight per honest worker, disjoint from every oracle's sample where
   a partition is large enough). Damage of a variant = its held-out loss increase
   over SF (``lambda = -1``) summed over the rounds, as a percentage of the reference
   search's (dense lambda grid, 4096-example oracle). Time = one attack call
   (search + aggregations + losses), in this process at ``--threads`` torch threads
   (1, as in a Flower node), next to one SF round's compute (12 honest steps + the
   aggregation) measured in the same run.
2. Whole-run damage (``--curves``): whole runs under each of ``--curve-variants``
   for each seed, test accuracy every ``--curve-every`` rounds; a variant's damage
   is its accuracy deficit against the first variant averaged over the run, paired
   by seed, and a variant that damages less than the first by more than two paired
   standard errors is flagged. One-step damage (1.) cannot see a search that wins
   each step but lets the model recover over the run; this check can.

Variants: ``today`` (the search before issue 8: global search, every candidate on a
1024-example oracle), then the levers added one at a time (``+...``), ``sample-64``
(every candidate and the answer on 64 examples: the sample's effect on damage) and
``default`` (the settings' defaults, with the task's ``jump_sample``), ``powell`` (the
paper's solver) and ``global-2048`` (the default search on an 8x larger oracle sample).
The replay compares each variant with ``default`` round by round (held-out loss difference,
its paired standard error).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from flwr_byz.attacks import get_attack, span
from flwr_byz.attacks.base import Attack
from flwr_byz.attacks.jump import fingerprint
from flwr_byz.attacks.span import orthonormal_span, span_aggregation
from flwr_byz.node_data import honest_partitions
from flwr_byz.settings import RunSettings
from flwr_byz.studies.replay import RecordedRound, leader_context, simulate
from flwr_byz.flat import FlatLayout
from flwr_byz.tasks import get_task, loss_draws

HONEST = 12
REFERENCE_SAMPLE = 2048


@dataclass(frozen=True)
class Variant:
    """A JUMP configuration: attack parameters and run-settings overrides (the oracle's sampling)."""

    params: dict[str, object] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)

    def of(self, settings: RunSettings) -> RunSettings:
        return dataclasses.replace(settings, **self.settings)

    def attack(self) -> Attack:
        return get_attack("jump", **self.params)


def sampled(size: int, screen: int = 0, precision: str = "float32") -> dict[str, object]:
    return {"jump_loss_size": size, "jump_screen_size": screen, "jump_screen_precision": precision}


TODAY = {"rounds": 2, "splits": 3, "piece_ends": 0}  # the global search before issue 8
VARIANTS: dict[str, Variant] = {
    "reference": Variant({"inlier_points": 25, "peaks": 2, "rounds": 3, "splits": 3, "per_decade": 3},
                         sampled(REFERENCE_SAMPLE)),
    "today": Variant(TODAY, sampled(1024)),
    "+screen-64": Variant(TODAY, sampled(1024, 64)),
    "+finalists-2@512": Variant({**TODAY, "finalists": 2}, sampled(512, 64)),
    "+search-r4s2": Variant({**TODAY, "rounds": 4, "splits": 2, "finalists": 2}, sampled(512, 64)),
    "+piece-ends": Variant({"rounds": 4, "splits": 2, "finalists": 2}, sampled(512, 64)),
    "+bf16-screen": Variant({"rounds": 4, "splits": 2, "finalists": 2}, sampled(512, 64, "bfloat16")),
    "sample-64": Variant({"rounds": 4, "splits": 2}, sampled(64)),
    "default": Variant(),
    "powell": Variant({"solver": "powell"}),  # the paper's solver: Powell from lambda = 1
    "global-2048": Variant({}, sampled(2048, 256)),  # the default search on an 8x larger oracle sample
    "sample-256": Variant({}, sampled(256)),  # every candidate and the answer on 256 examples (the CNN's size)
    # Logistic regression's oracle (its default: every candidate on 1024 examples) against screened ones
    "full-1024": Variant({}, sampled(1024)),
    "full-2048": Variant({}, sampled(2048)),  # every candidate on 2048 examples
    "screen-128": Variant({}, sampled(1024, 128)),  # candidates ranked on 128 examples, the 2 best on 1024
    "screen-256-f4": Variant({"finalists": 4}, sampled(1024, 256)),  # ranked on 256, the 4 best on 1024
}


def heldout_loss(settings: RunSettings, state: RecordedRound, size: int) -> Callable[[Tensor], float]:
    """``L_H`` of one flat model on ``size // h`` examples per honest worker, taken after the first
    ``REFERENCE_SAMPLE // h`` of the oracle's per-worker draw (disjoint from every oracle sample)."""
    task, x, y, parts = honest_partitions(settings, HONEST)
    skip, per_worker = REFERENCE_SAMPLE // HONEST, size // HONEST
    draws = loss_draws(parts, settings.seed, state.round)
    picks = [d[skip : skip + per_worker] if len(d) > skip else d[:per_worker] for d in draws]
    model = task.build_model()

    def loss(flat: Tensor) -> float:
        return statistics.mean(float(task.batched_loss(model, flat[None], x[i], y[i])[0]) for i in picks)

    return loss


def sf_round_seconds(settings: RunSettings, threads: int) -> float:
    """Compute of one SF round in this process at ``threads`` torch threads: the honest steps and one
    aggregation (the median of three first rounds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in simulate(settings, HONEST + settings.num_byzantine, get_attack("sf"), rounds=1):
            pass
        times.append(time.perf_counter() - start)
    torch.set_num_threads(before)
    return statistics.median(times)


def recorded(args: argparse.Namespace, settings: RunSettings, keep: set[int]) -> list[RecordedRound]:
    """The kept rounds of the run under the ``--drive`` variant (from ``--states`` if that file exists,
    else recorded, and saved there when given)."""
    if args.states and Path(args.states).exists():
        states: list[RecordedRound] = torch.load(args.states, weights_only=False)
        print(f"{len(states)} recorded rounds from {args.states}")
        return states
    drive = VARIANTS[args.drive]
    print(f"recording {args.rounds} rounds of {settings.name} under JUMP {args.drive} (keeping {len(keep)})", flush=True)
    run = simulate(drive.of(settings), HONEST + settings.num_byzantine, drive.attack(), args.rounds)
    states = [s for s in run if s.round in keep]
    if args.states:
        torch.save(states, args.states)
    return states


def exact_levers(settings: RunSettings, state: RecordedRound, threads: int) -> None:
    """The exact levers on one recorded state, each against what it replaced (same results to rounding)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    task, x, y, parts = honest_partitions(settings, HONEST)
    idx = torch.cat([torch.as_tensor(p[:85]) for p in parts])
    model, flat = task.build_model(), state.params[None]

    model.eval()

    def vmap_loss() -> Tensor:  # the loss before: all candidates in one vmap, NCHW, 1024 examples a batch
        entries = FlatLayout.of(model.state_dict()).unflatten(flat)
        one = lambda entry, xb, yb: task.criterion(functional_call(model, entry, (xb,)), yb)  # noqa: E731
        return torch.func.vmap(one, in_dims=(0, None, None))(entries, x[idx], y[idx])

    fast_span = span_aggregation(settings.aggregator(), state.honest, settings.num_byzantine)
    lams = torch.linspace(-6.0, 8.0, 20, dtype=torch.float64)

    def whole_rows() -> Tensor:  # CM/TM before: h lifted rows of d coordinates, one lambda a call
        block, span.BLOCK = span.BLOCK, state.honest.shape[1]
        try:
            return torch.cat([fast_span(lam[None]) for lam in lams])
        finally:
            span.BLOCK = block

    def eager_network() -> Tensor:  # the selection network as one min/max pass over memory per comparator
        compiled = span.order_statistics
        span.order_statistics = lambda rows, ranks, fuse=None: compiled(rows, ranks, fuse=False)
        try:
            return fast_span(lams)
        finally:
            span.order_statistics = compiled

    def householder() -> Tensor:  # the span's basis before: float64 Householder QR
        return torch.linalg.qr(state.honest.double().T)[0]

    aggregates = fast_span(lams) if fast_span is not None else state.honest
    rows = [("honest loss, 1 candidate x 1020 examples", vmap_loss, lambda: task.batched_loss(model, flat, x[idx], y[idx])),
            ("span basis (Householder -> Cholesky QR)", householder, lambda: orthonormal_span(state.honest)),
            (f"dedup keys of {len(aggregates)} aggregates (SHA-256 -> fingerprint)",
             lambda: [hashlib.sha256(a.numpy().tobytes()).digest() for a in aggregates],
             lambda: [fingerprint(a) for a in aggregates])]
    if fast_span is not None and type(settings.aggregator().rule).__name__ in ("CoordinateMedian", "TrimmedMean"):
        rows.append((f"{settings.aggregation} aggregates of 20 lambdas", whole_rows, lambda: fast_span(lams)))
        rows.append(("  its selection network (eager -> compiled)", eager_network, lambda: fast_span(lams)))
    print(f"\nexact levers ({threads} thread(s)): before -> after")
    for label, old, new in rows:
        times = [min(timed(fn) for _ in range(3)) for fn in (old, new)]
        print(f"  {label:<56}{times[0] * 1e3:>8.0f} ms -> {times[1] * 1e3:>6.0f} ms  ({times[0] / times[1]:.1f}x)")
    torch.set_num_threads(before)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def replay(args: argparse.Namespace, settings: RunSettings) -> None:
    names, threads = args.variants.split(","), torch.get_num_threads()
    keep = set(range(args.every, args.rounds + 1, args.every))
    states = recorded(args, settings, keep)
    sf_step = sf_round_seconds(settings, args.threads)
    rule, f = settings.aggregator(), settings.num_byzantine
    losses: dict[str, list[float]] = {name: [] for name in ["sf", *names]}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    scored: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for state in states:
        heldout = heldout_loss(settings, state, args.heldout)
        gbar = state.honest.mean(0)

        def after(vector: Tensor) -> float:
            aggregate = rule.for_round(state.round)(torch.cat([state.honest, vector.expand(f, -1)]))
            return heldout(state.params - state.lr * aggregate)

        losses["sf"].append(after(-gbar))
        cells = []
        for name in names:
            variant = VARIANTS[name]
            attack = variant.attack()
            ctx = leader_context(variant.of(settings), state)
            torch.set_num_threads(threads if name == "reference" else args.threads)  # time the others as in a node
            start = time.perf_counter()
            vector = attack(state.honest, ctx)
            seconds[name].append(time.perf_counter() - start)
            torch.set_num_threads(threads)
            scored[name].append((attack.metrics["jump-evals"], attack.metrics["jump-losses"]))
            losses[name].append(after(vector))
            cells.append(f"{name} {attack.metrics['jump-lambda']:+.3f} {losses[name][-1]:.4f}")
        print(f"round {state.round:>3}  sf {losses['sf'][-1]:.4f}  " + "  ".join(cells), flush=True)

    base = np.array(losses["sf"])
    ref = np.array(losses["reference"]) - base if "reference" in losses else None
    print(f"\n{settings.task}, {settings.aggregation}, h = {HONEST}, f = {f}, {len(states)} rounds, "
          f"held-out {args.heldout} examples, attacks timed at {args.threads} torch thread(s); "
          f"one SF round (12 honest steps + aggregation) {sf_step:.2f} s")
    print(f"{'variant':<18}{'s/attack':>9}{'x SF rnd':>9}{'lambdas':>8}{'losses':>8}{'held-out L':>12}"
          f"{'+ over SF':>11}{'% of ref':>9}")
    for name in names:
        gain = np.array(losses[name]) - base
        share = f"{100 * gain.sum() / ref.sum():.1f}" if ref is not None and ref.sum() > 0 else "-"
        secs = statistics.mean(seconds[name])
        evals, distinct = np.mean(scored[name], axis=0)
        print(f"{name:<18}{secs:>9.2f}{(sf_step + secs) / sf_step:>9.2f}{evals:>8.1f}{distinct:>8.1f}"
              f"{np.mean(losses[name]):>12.4f}{gain.mean():>+11.4f}{share:>9}")
    if "default" in losses and len(states) > 1:
        jump = np.array(losses["default"]) - base
        print("\nagainst 'default' (JUMP), paired by round: held-out loss difference and its standard error, damage "
              "as a % of JUMP's, time per attack as a multiple of JUMP's, rounds it damages more")
        for name in names:
            diff = np.array(losses[name]) - np.array(losses["default"])
            se = diff.std(ddof=1) / np.sqrt(len(diff))
            share = 100 * (jump.sum() + diff.sum()) / jump.sum() if jump.sum() > 0 else float("nan")
            cost = statistics.mean(seconds[name]) / statistics.mean(seconds["default"])
            print(f"{name:<18}{diff.mean():>+10.4f} ({se:.4f}){share:>9.1f} %{cost:>8.2f}x"
                  f"  wins {int((diff > 0).sum())}/{len(diff)}")


def curves(args: argparse.Namespace, settings: RunSettings) -> None:
    """Whole-run damage: the same runs under each ``--curve-variants`` JUMP, per seed, test accuracy every
    ``--curve-every`` rounds. A variant's damage is its accuracy deficit against the first variant (the
    reference) averaged over the evaluated rounds (the area between the curves), paired by seed; a variant
    that leaves the model more than two paired standard errors better off than the reference is flagged."""
    task = get_task(settings.task)
    x, y = task.load("test")
    checkpoints = list(range(args.curve_every, args.curve_rounds + 1, args.curve_every))
    names, seeds = args.curve_variants.split(","), [int(s) for s in args.curves.split(",")]
    table: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name in names:
        variant, rows = VARIANTS[name], []
        start = time.perf_counter()
        for seed in seeds:
            run = dataclasses.replace(variant.of(settings), seed=seed)
            model, accuracy = task.build_model(), []
            layout = FlatLayout.of(model.state_dict())
            for state in simulate(run, HONEST + run.num_byzantine, variant.attack(), rounds=args.curve_rounds):
                if state.round in checkpoints:
                    model.load_state_dict(layout.unflatten(state.params))
                    accuracy.append(task.evaluate(model, x, y)[1])
            rows.append(accuracy)
            print(f"{name:<10} seed {seed}: " + " ".join(f"{a:.3f}" for a in accuracy), flush=True)
        table[name], seconds[name] = np.array(rows), (time.perf_counter() - start) / len(seeds)
    reference = names[0]
    print(f"\n{settings.task}, {settings.aggregation}, {settings.partition}, seeds {seeds}: test accuracy at rounds "
          f"{checkpoints} (mean over seeds); whole-run damage against {reference!r}")
    print(f"{'variant':<10}{'s/run':>8}{'mean acc':>10}{'best acc':>10}{'vs ref':>9}{'paired se':>10}  curve")
    flagged = []
    for name in names:
        acc = table[name]
        gap = (acc - table[reference]).mean(1)  # per seed: accuracy above the reference's, over the whole run
        se = gap.std(ddof=1) / np.sqrt(len(seeds)) if len(seeds) > 1 else float("nan")
        if name != reference and gap.mean() > 2 * se:
            flagged.append(name)
        print(f"{name:<10}{seconds[name]:>8.0f}{acc.mean():>10.3f}{acc.max(1).mean():>10.3f}{gap.mean():>+9.3f}"
              f"{se:>10.3f}  " + " ".join(f"{a:.3f}" for a in acc.mean(0)))
    for name in flagged:
        print(f"WARNING: {name!r} damages less than {reference!r} over the whole run (accuracy "
              f"{(table[name] - table[reference]).mean():+.3f} above it, more than two paired standard errors)")
    if flagged:
        raise SystemExit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mnist")
    ap.add_argument("--aggregation", default="nnm+cm")
    ap.add_argument("--rounds", type=int, default=48, help="rounds of the recorded run (0: no replay)")
    ap.add_argument("--every", type=int, default=2, help="keep every n-th round")
    ap.add_argument("--drive", default="default", help="the variant whose run is recorded")
    ap.add_argument("--states", default="", help="file of recorded rounds: loaded if it exists, else written")
    ap.add_argument("--heldout", type=int, default=8192)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-replay", action="store_true", help="skip the variants (exact levers, curves only)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the timed attacks (a Flower node's)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--levers", action=argparse.BooleanOptionalAction, default=True,
                    help="time the exact levers against what they replaced")
    ap.add_argument("--curves", default="", help="comma-separated seeds: also compare whole runs (accuracy curves)")
    ap.add_argument("--curve-variants", default="default,powell,today",
                    help="variants of the whole-run check, the first one the reference")
    ap.add_argument("--curve-rounds", type=int, default=30)
    ap.add_argument("--curve-every", type=int, default=5)
    args = ap.parse_args()
    settings = RunSettings(task=args.task, aggregation=args.aggregation, attack="jump", seed=args.seed)
    if not args.no_replay:
        replay(args, settings)
    if args.levers:
        states = recorded(args, settings, set(range(args.every, args.rounds + 1, args.every)))
        exact_levers(settings, states[len(states) // 2], args.threads)
    if args.curves:
        curves(args, settings)


if __name__ == "__main__":
    main()
