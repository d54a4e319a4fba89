"""Launching Flower apps with `flwr run` on an isolated local SuperLink, and checking the outcome.

`flwr run --stream` exits 0 even when the run failed, so the outcome is read back
with `flwr ls --format json`. Each launcher owns a Flower home, two ports and a
Ray temp dir, so runs (and tests) never meet another user's SuperLink, and it
stops the SuperLink it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

RUN_ID = re.compile(r"Successfully started run (\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tail(output: str, lines: int = 25) -> str:
    """The last ``lines`` lines of a run's output, colours removed: where its error is."""
    return "\n".join(ANSI.sub("", output).strip().splitlines()[-lines:])


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal for ``--run-config``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunOutcome:
    """What `flwr run` left behind: run id, final status (``finished:completed`` on success), output."""

    run_id: str | None
    status: str
    output: str

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


class FlowerLauncher:
    """Runs apps on a private local SuperLink rooted at ``home`` (Ray's files in a short /tmp dir)."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.http_port, self.control_port = free_port(), free_port()
        # Ray's socket paths must stay under 107 bytes: keep its temp dir short.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="flwr-byz-ray-", dir="/tmp"))

    @property
    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_HOME": str(self.home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.http_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(self.control_port),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "RAY_TMPDIR": str(self.ray_tmp),
        }

    def run(
        self,
        app_dir: Path,
        run_config: Mapping[str, Any],
        num_supernodes: int,
        num_cpus: float = 1,
        num_gpus: float = 0,
        timeout: float = 3600,
        echo: TextIO | None = None,
    ) -> RunOutcome:
        """`flwr run app_dir --stream` with ``run_config`` overrides; the run's outcome.

        Output lines are copied to ``echo`` as they arrive (progress for long runs); after
        ``timeout`` seconds `flwr run` is killed and the run's status is whatever `flwr ls` says.
        """
        overrides = " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())
        federation = (f"num-supernodes={num_supernodes} client-resources-num-cpus={num_cpus} "
                      f"client-resources-num-gpus={num_gpus}")
        cmd = ["flwr", "run", str(Path(app_dir).resolve()), "--stream", "--federation-config", federation]
        if overrides:
            cmd += ["--run-config", overrides]
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=self.home)
        lines: list[str] = []
        watchdog = threading.Timer(timeout, proc.kill)  # a hung run is killed, not waited for forever
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if echo is not None:
                    echo.write(line)
                    echo.flush()
            proc.wait()
        finally:
            watchdog.cancel()
        output = "".join(lines)
        match = RUN_ID.search(output)
        run_id = match.group(1) if match else None
        return RunOutcome(run_id, self.status(run_id) if run_id else "not-started", output)

    def status(self, run_id: str) -> str:
        """Status of ``run_id`` as `flwr ls` reports it."""
        out = subprocess.run(["flwr", "ls", "--format", "json", "--run-id", run_id], env=self.env,
                             capture_output=True, text=True, cwd=self.home, timeout=120)
        try:
            runs = json.loads(out.stdout)["runs"]
        except (json.JSONDecodeError, KeyError):
            return f"unknown ({out.stdout.strip() or out.stderr.strip()})"
        return str(runs[0]["status"]) if runs else "unknown"

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process this launcher started (`flwr run`, the SuperLink, the ServerApp and Ray's
        processes: all carry this launcher's ``FLWR_HOME`` in their environment): SIGTERM, then SIGKILL
        after ``grace`` seconds."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            procs = self.processes()
            for pid in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while procs and time.monotonic() < deadline:
                time.sleep(0.1)
                procs = self.processes()
            if not procs:
                break
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def processes(self) -> list[int]:
        """Pids of the live processes whose environment carries this launcher's ``FLWR_HOME``."""
        marker, pids = f"FLWR_HOME={self.home}".encode(), []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                alive = (proc / "stat").read_text().split(") ")[-1][0] != "Z"
            except OSError:
                continue
            if marker in environ and alive:
                pids.append(int(proc.name))
        return pids

    def __enter__(self) -> FlowerLauncher:
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(terminated_as_interrupt())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            with signals_ignored():  # a second Ctrl-C must not cut the cleanup short
                self.stop()
        finally:
            self._signals.close()


@contextlib.contextmanager
def signal_handlers(handlers: dict[signal.Signals, Any]) -> Iterator[None]:
    """``handlers`` installed inside, the previous ones restored after; outside the main thread (where Python
    cannot set handlers) nothing changes."""
    try:
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def signals_ignored() -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM ignored inside: for cleanup that must finish."""
    return signal_handlers({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN})


def terminated_as_interrupt() -> contextlib.AbstractContextManager[None]:
    """SIGTERM raises ``KeyboardInterrupt`` inside (as Ctrl-C does), so cleanup code runs for both."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal_handlers({signal.SIGTERM: interrupt})
