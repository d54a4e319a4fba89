"""How one aggregation and one JUMP attack grow with the number of nodes ``n``, for every rule.

Setting: softmax regression on random data (``d = 10 * (features + 1)``: ``d = 7,850`` is MNIST's logistic
regression, ``d = 1,200,010`` about the MNIST CNN's 1.2M parameters), ``f = n / 5`` Byzantine nodes,
honest vectors = a true gradient plus heterogeneity noise (float32), JUMP's honest loss on ``--samples``
random points, torch on ``--threads`` threads (1 by default, as a Flower node runs). For each ``d``, spec
and ``n``:

* ``mean ms``: ``torch.mean`` of the ``(n, d)`` stack, the floor every rule is compared to;
* ``agg ms`` and ``x mean``: one aggregation (minimum of ``--repeat`` calls) and its ratio to the mean;
* ``jump ms`` and ``x agg``: one JUMP call (default global search; the faster of two, as the first may
  compile a selection network for a new shape) and its ratio to one aggregation;
  ``evals``: the lambdas it scored; ``x budget``: its ratio to scoring each of them by brute force with one
  aggregation and one honest-loss evaluation (JUMP's budget: about 1 or below at any ``n``);
* ``peak MB``: the largest resident memory above the inputs during the aggregation and the JUMP call (the
  process's peak RSS, reset before each measurement through ``/proc/self/clear_refs``; on CUDA the
  allocator's peak).

Then the growth exponents: the log-log slope of each time between consecutive ``n`` (the mean grows like
``n``; coordinate-wise rules like ``n`` to ``n log n``; Krum, MultiKrum, Bulyan and NNM like ``n^2`` from
their exact pairwise distances; JUMP should grow as the rule it attacks).

    python benchmarks/bench_jump_scaling.py                       # d = 7,850, n = 15 .. 1,000, every spec
    python benchmarks/bench_jump_scaling.py --dims 1200010 --sizes 15 50 100 200
    python benchmarks/bench_jump_scaling.py --specs nnm+gm nnm+cm --sizes 15 50 100 200

A larger ``n`` of a spec is skipped (and said so) once the previous one took more than ``--max-seconds``
for the aggregation or the JUMP call; a spec whose precondition refuses ``n`` (e.g. MDA's enumeration
limit) prints its error. Results (every row) go to ``--json`` if given.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from flwr_byz.aggregation import PRE_AGGREGATORS, RULES, get_aggregator
from flwr_byz.attacks import AttackContext, get_attack

CLASSES = 10
# Every rule alone, and every pre-aggregator in front of CM (NNM also in front of GM, the paper's pairing).
DEFAULT_SPECS = [*RULES, *(f"{pre}+cm" for pre in PRE_AGGREGATORS), "nnm+gm"]


def softmax_loss(features: int, samples: int, gen: torch.Generator, device: torch.device) -> Callable[[Tensor], Tensor]:
    """Mean cross-entropy ``(k, d) -> (k,)`` of linear classifiers on random data."""
    x = torch.randn(samples, features, generator=gen).to(device)
    y = torch.randint(CLASSES, (samples,), generator=gen).to(device)

    def loss(theta: Tensor) -> Tensor:
        w = theta[:, : features * CLASSES].reshape(-1, CLASSES, features)
        logits = torch.einsum("mp,kcp->kmc", x, w) + theta[:, None, features * CLASSES :]
        picked = logits.gather(-1, y.view(1, -1, 1).expand(len(theta), -1, 1)).squeeze(-1)
        return (logits.logsumexp(-1) - picked).mean(1)

    return loss


class Peak:
    """Peak memory above the level at entry: resident set (CPU, ``VmHWM`` after a reset) or CUDA allocations."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mb = device, math.nan

    def __enter__(self) -> Peak:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_kb("VmHWM") * 1024
        self.mb = max(0, peak - self.base) / 2**20


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def best_of(repeat: int, fn: Callable[[], object], device: torch.device) -> float:
    """Minimum wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(n: int, d: int, spec: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    gen = torch.Generator().manual_seed(n)
    f = max(1, n // 5)
    features = d // CLASSES - 1
    loss = softmax_loss(features, args.samples, gen, device)
    theta = (0.01 * torch.randn(d, generator=gen)).to(device)
    grad = torch.func.grad(lambda t: loss(t[None])[0])(theta)
    noise = torch.randn(n - f, d, generator=gen).to(device)
    honest = grad + grad.norm() * noise / d**0.5
    del noise
    agg = get_aggregator(spec, f=f, n=n).with_reference(grad)  # FLTrust's g0: the true gradient
    stack = torch.cat([honest, -honest.mean(0).expand(f, d)])
    ctx = AttackContext(n=n, f=f, aggregator=agg, lr=0.5, params=theta, honest_loss=loss)
    with torch.no_grad():
        mean_s = best_of(args.repeat, lambda: stack.mean(0), device)
        with Peak(device) as agg_peak:
            agg_s = best_of(args.repeat, lambda: agg(stack), device)
        loss_s = best_of(args.repeat, lambda: loss(theta[None]), device)
    row = {"n": n, "d": d, "spec": spec, "mean": mean_s, "agg": agg_s, "loss": loss_s,
           "agg_mb": agg_peak.mb, "jump": math.nan, "evals": math.nan, "jump_mb": math.nan}
    if not args.no_jump and agg_s <= args.max_seconds:
        attack = get_attack("jump", **({} if args.max_batch_elems is None else {"max_batch_elems": args.max_batch_elems}))
        with Peak(device) as jump_peak:
            row["jump"] = best_of(2, lambda: attack(honest, ctx), device)  # the first call may compile kernels
        row["evals"], row["jump_mb"] = attack.metrics["jump-evals"], jump_peak.mb
    return row


def slope(xs: list[int], ys: list[float]) -> str:
    """Log-log slopes between consecutive points."""
    return " ".join(f"{math.log(ys[i + 1] / ys[i]) / math.log(xs[i + 1] / xs[i]):5.2f}"
                    if ys[i] > 0 and ys[i + 1] > 0 and math.isfinite(ys[i + 1]) else "    -" for i in range(len(xs) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[15, 50, 100, 200, 500, 1000])
    parser.add_argument("--dims", type=int, nargs="+", default=[7850], help="d = 10 (features + 1)")
    parser.add_argument("--specs", nargs="+", default=DEFAULT_SPECS)
    parser.add_argument("--samples", type=int, default=256, help="points of the honest loss")
    parser.add_argument("--repeat", type=int, default=3, help="calls per mean / aggregation / loss timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-jump", action="store_true", help="aggregations only")
    parser.add_argument("--max-seconds", type=float, default=20.0,
                        help="skip the larger sizes of a spec once an aggregation or a JUMP call took longer")
    parser.add_argument("--max-batch-elems", type=int,
                        help="JUMP's cap on the entries of one batched (k, n, d) call (default: the device's)")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows: list[dict] = []
    print(f"f = n/5, {args.threads} thread(s), {device}, honest loss on {args.samples} points")
    for d in args.dims:
        print(f"\nd = {d:,}")
        print(f"{'spec':16} {'n':>5} {'mean ms':>8} {'agg ms':>9} {'x mean':>8} {'peak MB':>8} {'jump ms':>10} "
              f"{'x agg':>7} {'evals':>6} {'x budget':>8} {'peak MB':>8}", flush=True)
        for spec in args.specs:
            done: list[dict] = []
            for n in args.sizes:
                if done and max(done[-1]["agg"], done[-1]["jump"] if math.isfinite(done[-1]["jump"]) else 0) \
                        > args.max_seconds:
                    print(f"{spec:16} {n:5d}  skipped: n = {done[-1]['n']} took more than {args.max_seconds:g} s")
                    break
                try:
                    r = measure(n, d, spec, args, device)
                except ValueError as err:
                    print(f"{spec:16} {n:5d}  refused: {err}")
                    break
                done.append(r)
                rows.append(r)
                budget = r["evals"] * (r["agg"] + r["loss"])
                print(f"{spec:16} {n:5d} {1e3 * r['mean']:8.3f} {1e3 * r['agg']:9.2f} {r['agg'] / r['mean']:8.0f} "
                      f"{r['agg_mb']:8.0f} {1e3 * r['jump']:10.1f} {r['jump'] / r['agg']:7.1f} {r['evals']:6.0f} "
                      f"{r['jump'] / budget:8.2f} {r['jump_mb']:8.0f}", flush=True)
            if len(done) > 1:
                ns = [r["n"] for r in done]
                print(f"{'':16} growth exponents between n = {ns}: mean {slope(ns, [r['mean'] for r in done])} | "
                      f"agg {slope(ns, [r['agg'] for r in done])} | jump {slope(ns, [r['jump'] for r in done])}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
