"""Every code block of the README and the docs runs (or is checked) as written; its fence says how.

* ``python``: run as a script, in this process. A block whose first line is a comment naming a file
  (``# examples/quickstart-robust/quickstart/server_app.py``) is an excerpt instead: its lines must be lines of that
  file, in order (``...`` skips), and the tests that run the file run the code.
* ``bash``: run with ``bash -e`` from the repository root, the project's ``.venv/bin`` first on the PATH (quick
  commands only).
* ``console``: shown, not run; every ``flwr-byz`` command in it is parsed by the real parser (a wrong option or choice
  fails), every repository path it names must exist, and every packaged spec name it runs must exist.
* ``toml``: parsed; a sweep spec (it has a ``name``) is loaded and every run of it checked.
* ``text``: output as measured; not run.

Any other fence fails, so a new block chooses one of these.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

LANGUAGES = {"python", "bash", "console", "toml", "text"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                   flags=re.S | re.M)
REPO_PATH = re.compile(r"^(examples|simulations|studies|benchmarks|tests|docs|scripts)/[\w./+-]*$")


def pages() -> list[Path]:
    """README.md and every Markdown page of the docs, the examples, the studies and the benchmarks."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(ROOT.glob("examples/*/README.md")),
             *sorted(ROOT.glob("studies/*/README.md")), ROOT / "benchmarks/README.md",
             ROOT / "simulations/paper/SETTING-CHECK.md"]
    return [p for p in found if "_build" not in p.parts and "audit-userapp" not in p.parts]


def blocks(path: Path) -> list[tuple[str, str]]:
    """``(language, body)`` of each fenced block; MyST directives (``{toctree}``, ``{include}``) are not code."""
    out = []
    for match in FENCE.finditer(path.read_text()):
        language = match["info"].strip().split(" ")[0]
        if language.startswith("{"):
            continue
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        out.append((language, body))
    return out


BLOCKS = [(path.relative_to(ROOT).as_posix(), i, language, body)
          for path in pages() for i, (language, body) in enumerate(blocks(path))]


def of(language: str) -> list:
    return [pytest.param(page, body, id=f"{page}:{i}") for page, i, lang, body in BLOCKS if lang == language]


def test_every_block_says_how_it_is_checked():
    unknown = [f"{page} block {i}: {language!r}" for page, i, language, _ in BLOCKS if language not in LANGUAGES]
    assert not unknown, f"fence languages must be one of {sorted(LANGUAGES)}: {unknown}"
    assert len(of("python")) >= 8 and len(of("console")) >= 10 and of("bash") and of("toml")


# ---------------------------------------------------------------- python

def excerpt_file(body: str) -> Path | None:
    """The file a block is an excerpt of: its first line ``# <path>``."""
    first = body.splitlines()[0]
    if not first.startswith("# "):
        return None
    candidate = ROOT / first[2:].split()[0].rstrip(":,")
    return candidate if candidate.is_file() else None


@pytest.fixture
def registries():
    """Blocks may register a rule or an attack (the how-to guides do): undone afterwards."""
    from flwr_byz.aggregation import PRE_AGGREGATORS, RULES
    from flwr_byz.attacks import ATTACKS

    saved = [(registry, dict(registry)) for registry in (RULES, PRE_AGGREGATORS, ATTACKS)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)


@pytest.mark.parametrize("page, body", of("python"))
def test_python_block_runs(page, body, registries, tmp_path, monkeypatch):
    source = excerpt_file(body)
    if source is not None:
        lines = [line.strip() for line in source.read_text().splitlines()]
        at = 0
        for line in body.splitlines()[1:]:
            wanted = line.strip()
            if not wanted or wanted == "...":
                continue
            assert wanted in lines[at:], f"{page}: {wanted!r} is not in {source.relative_to(ROOT)} (after line {at})"
            at = lines.index(wanted, at) + 1
        return
    monkeypatch.chdir(tmp_path)  # anything a block writes stays out of the checkout
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(body, page, "exec"), {"__name__": "__main__"})


# ---------------------------------------------------------------- shell

@pytest.mark.parametrize("page, body", of("bash"))
def test_bash_block_runs(page, body):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-e", "-c", body], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{page}:\n{body}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"


def commands(body: str) -> list[list[str]]:
    """The shell commands of a block: continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", body)
    return [words for line in text.splitlines() if (words := shlex.split(line, comments=True))]


def check_flwr_byz(argv: list[str]) -> None:
    from flwr_byz.cli import build_parser
    from flwr_byz.runs import grid

    if argv in (["--help"], ["-h"]) or argv[1:] in (["--help"], ["-h"]):
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            raise AssertionError(f"flwr-byz {shlex.join(argv)}: {err.getvalue().strip()}") from None
    if args.command == "sweep" and re.fullmatch(r"[a-z0-9-]+", args.spec):
        grid.spec_path(args.spec)  # a packaged spec's name (SPEC, a path: placeholders or checked as paths)


@pytest.mark.parametrize("page, body", of("console"))
def test_console_block_parses(page, body):
    for words in commands(body):
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before a command
            words = words[1:]
        if not words:
            continue
        for word in words:
            for part in re.split(r"[ =]", word):
                if REPO_PATH.match(part) and not any(c in part for c in "<>*{}") and "/your" not in part \
                        and "_build" not in part:  # an output folder
                    assert (ROOT / part).exists() or (ROOT / part.split(":")[0]).exists(), f"{page}: {part} is missing"
        name = Path(words[0]).name
        if name == "flwr-byz":
            check_flwr_byz(words[1:])
        elif name in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file(), f"{page}: {words[1]} is missing"


# ---------------------------------------------------------------- toml

@pytest.mark.parametrize("page, body", of("toml"))
def test_toml_block_loads(page, body, tmp_path):
    data = tomllib.loads(body)
    if "name" in data:
        from flwr_byz.runs import grid

        spec = tmp_path / "spec.toml"
        spec.write_text(body)
        assert grid.load(spec, tmp_path / "runs").runs
    else:
        from flwr_byz.settings import RunSettings

        RunSettings.from_run_config(data)  # a run config: every key and value checked
