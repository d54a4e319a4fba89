"""Benchmark the robust aggregation rules of ``flwr_byz.aggregation`` on CPU.

What is measured
----------------
For every spec (``mean, cm, tm, gm, krum, multikrum, nnm+cm, ...``) the
aggregator ``get_aggregator(spec, f, **params)`` is applied to one tensor
``x`` of shape ``(n, d)``, float32, by default ``n = 17`` vectors of
``d = 1.3M`` coordinates (the size of the CIFAR CNN).

* ``ms/call``: median (``--stat min``: fastest) wall time of ``--repeat`` calls after one warm-up
  call; on a busy machine the minimum is the steadier figure.
* ``x mean``: that time divided by the time of a plain ``torch.mean(x, dim=0)``
  over the same tensor, measured in the same run: one baseline call before each
  timed call of every spec, and the same statistic of all those baseline calls.
* ``before x mean`` (with ``--before REV``): the same ratio for the ``flwr_byz/aggregation``
  package of git revision ``REV`` (extracted with ``git archive`` and imported under another
  name), timed call by call alongside the current one, so both see the same machine load.
  E.g. ``--before 695ddf8``, the last revision with Gram-matrix distances and tie buckets.
* ``byzfl x mean`` (with ``--byzfl``): the same ratio for ByzFL 0.0.11's implementation of the
  rules it shares (:data:`BYZFL_SPECS`), called on the same tensor (ARC on a copy, as ours copies
  too) and timed call by call alongside ours.
* FLTrust scores against ``g_0 = `` the mean of the rows (its reference update).
* ``--input attack``: the last ``f`` rows are copies of one Byzantine vector at 1e6 x the honest
  per-coordinate spread (the regime where a Gram matrix loses the honest distances).
* ``peak extra / input``: each spec is run once more in a fresh subprocess
  (``tracemalloc`` does not see torch's allocations). The subprocess builds
  ``x``, warms the rule up on a tiny tensor, reads its current RSS, makes one
  call and reads the peak RSS. The difference, divided by the input size
  ``n * d * 4`` bytes, is the peak memory the call builds on top of its input
  (its output included). On Linux the peak is ``VmHWM`` of ``/proc/self/status``,
  reset to the current RSS just before the call through ``/proc/self/clear_refs``:
  ``ru_maxrss`` cannot be used as is, because ``exec`` carries the parent's peak
  RSS (this benchmark's, ~1 GB) over to the child. Elsewhere it falls back to
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, an upper bound. Anything
  above ``--mem-limit`` (4x by default) is flagged with ``!``: GM and Krum
  should stay O(n*d + n^2), i.e. a small constant multiple of the input.
  RSS moves in pages and allocator arenas, so the ratio only means something
  for inputs of tens of MiB (the default is 84 MiB).

Run it from the repository root::

    python benchmarks/bench_aggregation.py
    python benchmarks/bench_aggregation.py --n 17 --d 1300000 --f 4 --repeat 5 --specs cm,gm,krum
    python benchmarks/bench_aggregation.py --before 695ddf8 --input attack --no-memory
    python benchmarks/bench_aggregation.py --specs fltrust,dnc,signguard,flame,arc+cm,meamed,mda,caf --byzfl

Torch uses its default number of threads unless ``--threads`` is given (the memory
subprocesses use the same number).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from types import ModuleType

import torch

from flwr_byz.aggregation import get_aggregator

DEFAULT_SPECS = (
    "mean,cm,tm,gm,krum,multikrum,bulyan,cc,nnm+cm,nnm+tm,nnm+gm,nnm+krum,bucketing+nnm+cm,clipping+cm,"
    "fltrust,dnc,signguard,flame,arc+cm,meamed,mda,caf"
)
BYZFL_SPECS = ("mean", "cm", "tm", "krum", "meamed", "mda", "caf", "arc+cm")
"""The specs ByzFL 0.0.11 implements too (its ``Krum`` scores ``n - f - 1`` neighbours, ours ``n - f - 2`` by
default)."""


def byzfl_rule(spec: str, f: int) -> Callable[[torch.Tensor], object]:
    """ByzFL 0.0.11's implementation of ``spec`` (:data:`BYZFL_SPECS`) for ``f``, its ARC on a copy of the input
    (ByzFL clips its argument in place)."""
    import byzfl

    if spec == "arc+cm":
        arc, median = byzfl.ARC(f), byzfl.Median()
        return lambda x: median(arc(x.clone()))
    return {"mean": lambda: byzfl.Average(), "cm": lambda: byzfl.Median(), "tm": lambda: byzfl.TrMean(f),
            "krum": lambda: byzfl.Krum(f), "meamed": lambda: byzfl.Meamed(f), "mda": lambda: byzfl.MDA(f),
            "caf": lambda: byzfl.CAF(f)}[spec]()
# Parameters a spec needs beyond ``f`` (given only to specs with that stage).
STAGE_PARAMS = {"clipping": {"c": 1.0}}


def f_for(spec: str, f: int, n: int) -> int:
    """``f``, lowered to the largest value the spec accepts for ``n`` inputs (Bulyan needs n >= 4f + 3)."""
    while f > 0:
        try:
            get_aggregator(spec, f, n=n, **params_for(spec))
            return f
        except ValueError:
            f -= 1
    return f


def params_for(spec: str) -> dict:
    params: dict = {}
    for stage in spec.split("+"):
        params.update(STAGE_PARAMS.get(stage.strip().lower(), {}))
    return params


INPUTS = ("random", "attack")
ATTACK_SCALE = 1e6


def make_input(n: int, d: int, f: int = 0, kind: str = "random") -> torch.Tensor:
    """Standard normal rows; for ``attack`` the last ``f`` are one vector at ``ATTACK_SCALE`` x the spread."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, dtype=torch.float32)
    if kind == "attack" and f > 0:
        x[n - f :] = ATTACK_SCALE * torch.randn(d, generator=gen, dtype=torch.float32)
    return x


def load_aggregation(rev: str) -> ModuleType:
    """``flwr_byz/aggregation`` as of git revision ``rev``, imported as ``aggregation_<rev>``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(
        ["git", "-C", root, "archive", rev, "flwr_byz/aggregation"], capture_output=True, check=True
    ).stdout
    name = f"aggregation_{rev}"
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as target:  # the package imports all its modules at once
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        path = os.path.join(target, "flwr_byz", "aggregation")
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def timed_ms(fn, x: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return 1e3 * (time.perf_counter() - start)


def time_interleaved(fns: list[Callable], x: torch.Tensor, repeat: int) -> list[list[float]]:
    """Times in ms of ``repeat`` calls of each of ``fns``, alternated call by call after one
    warm-up of each, so all see the same machine load."""
    for fn in fns:
        fn(x)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, samples in zip(fns, times):
            samples.append(timed_ms(fn, x))
    return times


def ru_maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def proc_status_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of ``/proc/self/status`` in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    """Resident set size now; falls back to the peak where ``/proc`` is missing."""
    rss = proc_status_bytes("VmRSS")
    return ru_maxrss_bytes() if rss is None else rss


def peak_rss_bytes(reset: bool) -> int:
    hwm = proc_status_bytes("VmHWM") if reset else None
    return ru_maxrss_bytes() if hwm is None else hwm


def memory_probe(spec: str, n: int, d: int, f: int, kind: str) -> None:
    """Subprocess body: print the peak RSS increase of one call, in bytes, as JSON."""
    rule = (lambda x: torch.mean(x, dim=0)) if spec == "torch.mean" else get_aggregator(
        spec, f_for(spec, f, n), **params_for(spec)
    )

    def with_reference(x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return rule if spec == "torch.mean" else rule.with_reference(x.mean(0))  # FLTrust's g0, as timed

    warm = make_input(n, 64, f, kind)
    with_reference(warm)(warm)  # load kernels, thread pools, lazy imports
    x = make_input(n, d, f, kind)
    agg = with_reference(x)
    reset = reset_peak_rss()
    before = current_rss_bytes()
    out = agg(x)
    # Without the reset the peak is the whole process's, so an earlier, higher moment
    # makes this an over-estimate of the call's extra memory: an upper bound.
    extra = max(peak_rss_bytes(reset) - before, 0)
    print(json.dumps({"spec": spec, "extra_bytes": extra, "out_numel": out.numel()}))


def measure_memory(spec: str, n: int, d: int, f: int, kind: str) -> float | None:
    """Peak extra memory of one call of ``spec`` in a fresh interpreter, in bytes."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_probe", spec, "--n", str(n), "--d", str(d), "--f", str(f),
           "--input", kind, "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"memory probe for {spec!r} failed:\n{proc.stderr}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["extra_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=17, help="number of vectors (default 17)")
    parser.add_argument("--d", type=int, default=1_300_000, help="dimension (default 1.3M, the CIFAR CNN)")
    parser.add_argument("--f", type=int, default=4, help="presumed Byzantine inputs (default 4)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per spec after a warm-up (default 5)")
    parser.add_argument("--specs", default=DEFAULT_SPECS, help="comma-separated specs")
    parser.add_argument("--mem-limit", type=float, default=4.0, help="flag peak extra / input above this")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--input", choices=INPUTS, default="random",
                        help=f"random normals, or f of them replaced by copies at {ATTACK_SCALE:g} x the spread")
    parser.add_argument("--byzfl", action="store_true", help="also time ByzFL 0.0.11's implementation of shared rules")
    parser.add_argument("--before", metavar="REV", help="also time flwr_byz/aggregation of this git revision")
    parser.add_argument("--stat", choices=("median", "min"), default="median", help="statistic of the timed calls")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 is steadier on a busy machine)")
    parser.add_argument("--_probe", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args._probe:
        memory_probe(args._probe, args.n, args.d, args.f, args.input)
        return

    specs = [s.strip() for s in args.specs.split(",") if s.strip()]
    x = make_input(args.n, args.d, args.f, args.input)
    aggregators = {
        spec: get_aggregator(spec, f_for(spec, args.f, args.n), n=args.n, **params_for(spec)).with_reference(x.mean(0))
        for spec in specs
    }
    before = load_aggregation(args.before) if args.before else None
    for spec, agg in aggregators.items():
        if agg.f != args.f:
            print(f"note: {spec} runs with f={agg.f}, the largest it accepts for n={args.n}")
    input_bytes = x.numel() * x.element_size()
    print(
        f"n={args.n} d={args.d} f={args.f} float32 {args.input} input={input_bytes / 2**20:.1f} MiB, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeat={args.repeat}"
    )

    baseline = lambda t: torch.mean(t, dim=0)  # noqa: E731
    stat = statistics.median if args.stat == "median" else min
    rows, base_samples = [], []
    for spec in specs:
        fns = [baseline, aggregators[spec]]
        if before is not None:
            fns.append(before.get_aggregator(spec, aggregators[spec].f, **params_for(spec)))
        byzfl = args.byzfl and spec in BYZFL_SPECS
        if byzfl:
            fns.append(byzfl_rule(spec, aggregators[spec].f))
        base_ms, ms, *extra_ms = time_interleaved(fns, x, args.repeat)
        old = stat(extra_ms[0]) if before is not None else None
        theirs = stat(extra_ms[-1]) if byzfl else None
        rows.append((spec, stat(ms), old, theirs))
        base_samples += base_ms
    # One baseline for the whole table: the statistic of all its calls, spread over the run.
    mean_ms = stat(base_samples)
    del x

    memory: dict[str, float | None] = {}
    if not args.no_memory:
        for spec in ["torch.mean", *specs]:
            memory[spec] = measure_memory(spec, args.n, args.d, args.f, args.input)

    def mem_cell(spec: str) -> str:
        if args.no_memory:
            return "-"
        extra = memory.get(spec)
        if extra is None:
            return "failed"
        ratio = extra / input_bytes
        return f"{ratio:.2f}" + (" !" if ratio > args.mem_limit else "")

    width = max(len(s) for s in ["torch.mean", "spec", *specs])
    columns = [name for name, on in (("before x mean", before is not None), ("byzfl x mean", args.byzfl)) if on]

    def cells(*values: float | None) -> str:
        return "".join(f" | {'-' if v is None else f'{v / mean_ms:.2f}':>13}" for v in values)

    header = f"{'spec':<{width}} | {'ms/call':>9} | {'x mean':>7}{''.join(f' | {c:>13}' for c in columns)}"
    print(header + " | peak extra / input")
    print("-" * (len(header) + 21))
    blank = "".join(f" | {'':>13}" for _ in columns)
    print(f"{'torch.mean':<{width}} | {mean_ms:>9.1f} | {1.0:>7.2f}{blank} | {mem_cell('torch.mean')}")
    for spec, ms, old, theirs in rows:
        extra = cells(*[v for v, on in ((old, before is not None), (theirs, args.byzfl)) if on])
        print(f"{spec:<{width}} | {ms:>9.1f} | {ms / mean_ms:>7.2f}{extra} | {mem_cell(spec)}")
    print(
        f"\ntorch.mean baseline: {args.stat} of {len(base_samples)} calls, "
        f"range {min(base_samples):.1f}-{max(base_samples):.1f} ms (a wide range means a busy machine)"
    )
    if not args.no_memory:
        flagged = [s for s in specs if memory.get(s) is not None and memory[s] / input_bytes > args.mem_limit]
        print(f"! = peak extra memory above {args.mem_limit:g}x the input: {', '.join(flagged) or 'none'}")


if __name__ == "__main__":
    main()
