"""Start-up cost of a scikit-learn ClientApp with and without ``byzantine(app)``.

    python benchmarks/bench_client_import.py [--repeats 9] [--flwr-byz PATH]

The app is ``tests/apps/sklearnapp`` (Flower's quickstart-sklearn: a logistic regression on iris, its model in numpy
ArrayRecords), copied twice to a temporary folder: as it is, ending with ``app = byzantine(app)``, and without its
two flwr-byz lines. Each variant runs in a fresh interpreter ``--repeats`` times:

* ``app``: importing the ClientApp module without the flwr-byz lines;
* ``wrapped``: importing it with them;
* ``wrapped+honest``: the wrapped module, then an honest node of a run with Byzantine nodes answers the role
  query and a train message (what every honest node of an attacked run does).

Reported per variant: the process's wall time (interpreter start to exit) and CPU time (user + system; steadier
than the wall time on a busy machine), its peak resident memory (``ru_maxrss``), each the median over the repeats,
and whether ``torch`` was imported. ``--flwr-byz PATH`` runs against the ``flwr_byz`` package under ``PATH``
instead of the installed one (an export of an older commit, say).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "tests/apps/sklearnapp"
FLWR_BYZ_LINES = ("from flwr_byz.flower import byzantine\n", "app = byzantine(app)")

CHILD = '''
import json, resource, sys
sys.path.insert(0, {folder!r})
import sklearnapp.client_app as user
if {drive}:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from flwr_byz.flower.protocol import role_query
    from sklearnapp.task import create_model, get_params
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    context = Context(run_id=1, node_id=1, node_config={{"partition-id": 0, "num-partitions": 5}}, state=RecordDict(),
                      run_config={config!r})
    arrays = ArrayRecord(get_params(create_model("l2", 1)))
    for msg in (role_query(1), Message(RecordDict({{"arrays": arrays, "config": ConfigRecord()}}), dst_node_id=1,
                                       message_type="train")):
        msg.metadata.__dict__["_message_id"] = "m"
        reply = user.app(msg, context)
        assert not reply.has_error(), reply.error.reason
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"maxrss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "torch": "torch" in sys.modules,
                  "flwr_byz": getattr(sys.modules.get("flwr_byz"), "__path__", [""])[0]}}))
'''


def staged(folder: Path, wrapped: bool) -> Path:
    """A copy of the app's package under ``folder``; without its flwr-byz lines unless ``wrapped``."""
    shutil.copytree(APP / "sklearnapp", folder / "sklearnapp", ignore=shutil.ignore_patterns("__pycache__"))
    if not wrapped:
        client = folder / "sklearnapp/client_app.py"
        source = client.read_text()
        for line in FLWR_BYZ_LINES:
            if line not in source:
                raise RuntimeError(f"{client.name} no longer has the line {line!r}: update FLWR_BYZ_LINES")
            source = source.replace(line, "")
        client.write_text(source)
    return folder


def measure(code: str, env: dict[str, str], folder: Path, repeats: int) -> dict:
    """Medians of the wall time, CPU time and peak RSS of ``repeats`` runs of ``code``; what each imported."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=folder, capture_output=True, text=True,
                             check=True)
        runs.append({**json.loads(out.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start})
    result = {key: statistics.median(run[key] for run in runs) for key in ("wall_s", "cpu_s", "maxrss_mib")}
    return result | {key: sorted({run[key] for run in runs}) for key in ("torch", "flwr_byz")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--flwr-byz", type=Path, help="a folder holding the flwr_byz package to measure")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.flwr_byz:
        env["PYTHONPATH"] = os.pathsep.join([str(args.flwr_byz.resolve()), env.get("PYTHONPATH", "")])
    config = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config |= {"attack": "sf", "num-byzantine": 1}
    with tempfile.TemporaryDirectory() as tmp:
        plain, wrapped = staged(Path(tmp, "plain"), False), staged(Path(tmp, "wrapped"), True)
        for name, folder, drive in (("app", plain, False), ("wrapped", wrapped, False),
                                    ("wrapped+honest", wrapped, True)):
            code = CHILD.format(folder=str(folder), drive=drive, config=config)
            result = measure(code, env, folder, args.repeats)
            print(f"{name:15s} wall {result['wall_s']:.2f} s  CPU {result['cpu_s']:.2f} s  peak RSS "
                  f"{result['maxrss_mib']:.0f} MiB  torch imported: {result['torch']}  flwr_byz: {result['flwr_byz']}",
                  flush=True)


if __name__ == "__main__":
    main()
