"""How one JUMP call grows with the number of nodes ``n``, against one aggregation.

Setting: softmax regression of MNIST's size (``d = 7850``: 784 x 10 weights and 10
biases) on random data, ``f = n / 5`` Byzantine nodes, honest vectors = a true gradient
plus heterogeneity noise (float32), honest loss on ``--samples`` random points, torch
on ``--threads`` threads (1 by default). For each ``n`` and spec (``nnm+gm``, ``nnm+cm``):

* ``agg ms``: one aggregation of the ``(n, d)`` stack (minimum of ``--repeat`` calls),
* ``loss ms``: one honest-loss evaluation of one candidate model,
* ``bp ms``: ``SpanAggregation.breakpoints()`` alone (where NNM's neighbour sets change),
* ``jump ms``: one JUMP call (default global search; minimum of ``--jump-repeat`` calls),
  ``x agg``: its ratio to one aggregation, ``evals``: the lambdas it scored, and
  ``x evals*(agg+loss)``: its ratio to scoring each of them with one aggregation and one loss
  (JUMP's budget: about 1 or below once the breakpoints are cheap).

Then the growth exponents: the log-log slope of each time between consecutive ``n``
(an aggregation with NNM grows like ``n^2 d``; JUMP should grow alike).

    python benchmarks/bench_jump_scaling.py [--sizes 15 50 100 200] [--specs nnm+gm nnm+cm]

A size is skipped (and said so) once a JUMP call of the previous size took more than
``--max-seconds`` (the breakpoints before issue 21 grew like ``n^4``: 33 s at ``n = 100``).

Measured on a busy 2-core machine (other jobs running), one JUMP call in ms and its ratio to one
aggregation, before issue 21 (NNM on both sides of every candidate root) and after (one sort per row):

    spec    n    before ms (x agg)      after ms (x agg)   breakpoints ms before / after
    nnm+gm  15        34  (  20)          13  (7.6)            7.9 / 0.8
    nnm+gm  50     3,146  ( 490)          23  (3.7)          2,945 / 1.3
    nnm+gm 100   156,917  (7979)          53  (2.7)        125,466 / 1.3
    nnm+gm 200         -                 184  (3.0)              - / 3.3
    nnm+cm 100   116,339  (1461)         186  (11.0)       168,334 / 1.3
    nnm+cm 200         -                 646  (10.3)             - / 3.5

Growth exponents after: JUMP 1.8 between n = 100 and 200, as one aggregation (1.6-1.9); before: 4.5-5.7.
The default run takes about 10 s.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from flwr_byz.aggregation import get_aggregator
from flwr_byz.attacks import AttackContext, get_attack
from flwr_byz.attacks.span import span_aggregation

FEATURES, CLASSES = 784, 10


def softmax_loss(samples: int, gen: torch.Generator) -> Callable[[Tensor], Tensor]:
    """Mean cross-entropy ``(k, d) -> (k,)`` of a linear classifier on random data."""
    x = torch.randn(samples, FEATURES, generator=gen)
    y = torch.randint(CLASSES, (samples,), generator=gen)

    def loss(theta: Tensor) -> Tensor:
        w = theta[:, : FEATURES * CLASSES].reshape(-1, FEATURES, CLASSES)
        logits = torch.einsum("mp,kpc->kmc", x, w) + theta[:, None, FEATURES * CLASSES :]
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, CLASSES), y.repeat(len(theta)), reduction="none").view(len(theta), -1).mean(1)

    return loss


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """Minimum wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(n: int, spec: str, args: argparse.Namespace) -> dict[str, float]:
    gen = torch.Generator().manual_seed(n)
    f = max(1, n // 5)
    d = FEATURES * CLASSES + CLASSES
    loss = softmax_loss(args.samples, gen)
    theta = 0.01 * torch.randn(d, generator=gen)
    grad = torch.func.grad(lambda t: loss(t[None])[0])(theta)
    honest = grad + grad.norm() * torch.randn(n - f, d, generator=gen) / d**0.5
    agg = get_aggregator(spec, f=f)
    stack = torch.cat([honest, -honest.mean(0).expand(f, d)])
    ctx = AttackContext(n=n, f=f, aggregator=agg, lr=0.5, params=theta, honest_loss=loss)
    with torch.no_grad():
        agg_s = best_of(args.repeat, lambda: agg(stack))
        loss_s = best_of(args.repeat, lambda: loss(theta[None]))
        fast = span_aggregation(agg, honest, f)
        bp_s = best_of(1, fast.breakpoints) if fast is not None else math.nan
    attack = get_attack("jump")
    jump_s = best_of(args.jump_repeat, lambda: attack(honest, ctx))
    evals = attack.metrics["jump-evals"]
    return {"agg": agg_s, "loss": loss_s, "bp": bp_s, "jump": jump_s, "evals": evals,
            "breaks": float(len(fast.breakpoints())) if fast is not None else math.nan}


def slope(xs: list[int], ys: list[float]) -> str:
    """Log-log slopes between consecutive points."""
    return " ".join(f"{math.log(ys[i + 1] / ys[i]) / math.log(xs[i + 1] / xs[i]):5.2f}" for i in range(len(xs) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[15, 50, 100, 200])
    parser.add_argument("--specs", nargs="+", default=["nnm+gm", "nnm+cm"])
    parser.add_argument("--samples", type=int, default=256, help="points of the honest loss")
    parser.add_argument("--repeat", type=int, default=5, help="calls per aggregation / loss timing")
    parser.add_argument("--jump-repeat", type=int, default=1, help="calls per JUMP timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=20.0,
                        help="skip the larger sizes of a spec once one JUMP call took longer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"d = {FEATURES * CLASSES + CLASSES}, f = n/5, {args.threads} thread(s), loss on {args.samples} points")
    print(f"{'spec':8} {'n':>4} {'agg ms':>8} {'loss ms':>8} {'bp ms':>9} {'breaks':>7} {'jump ms':>10} "
          f"{'x agg':>8} {'evals':>6} {'x evals*(agg+loss)':>19}")
    for spec in args.specs:
        done: list[tuple[int, dict[str, float]]] = []
        for n in args.sizes:
            if done and done[-1][1]["jump"] > args.max_seconds:
                print(f"{spec:8} {n:4d}  skipped: n = {done[-1][0]} took {done[-1][1]['jump']:.1f} s")
                continue
            r = measure(n, spec, args)
            done.append((n, r))
            budget = r["evals"] * (r["agg"] + r["loss"])
            print(f"{spec:8} {n:4d} {1e3 * r['agg']:8.2f} {1e3 * r['loss']:8.2f} {1e3 * r['bp']:9.2f} "
                  f"{r['breaks']:7.0f} {1e3 * r['jump']:10.1f} {r['jump'] / r['agg']:8.1f} {r['evals']:6.0f} "
                  f"{r['jump'] / budget:19.2f}", flush=True)
        if len(done) > 1:
            ns = [n for n, _ in done]
            for key in ("agg", "bp", "jump"):
                print(f"{spec:8} growth exponent of {key:5} between n = {ns}: {slope(ns, [r[key] for _, r in done])}")


if __name__ == "__main__":
    main()
