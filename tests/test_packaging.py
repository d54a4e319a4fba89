"""The package as a user gets it: every third-party import declared in pyproject, and the wheel runs on its own.

The wheel tests build the wheel from a copy of the checkout, install it (not editable) into a fresh venv and run
the `flwr-byz` command from an empty folder with the checkout out of reach: the paper app's folder
(``flwr_byz/flower/paper/app``, a symlink to ``simulations/paper`` in the checkout) must be in the wheel as real
files for `flwr run` and the sweep specs to work there.

The fresh venv reuses this interpreter's installed dependencies instead of downloading them: it is made with
``--system-site-packages`` (which only shows the *base* interpreter's packages when this one is itself a venv)
plus a ``.pth`` line naming this interpreter's site-packages. A plain path line does not run that folder's own
``.pth`` files, so the checkout's editable finder (``__editable__.flwr_byz-*.pth``) stays off, and the fresh
venv's site-packages comes first on ``sys.path``: the wheel's ``flwr_byz`` wins. The console scripts of the
reused packages (``flwr``, ``flower-superlink``, ``flwr-simulation``, ...) are written into the fresh venv's
``bin`` so that `flwr run`, its SuperLink and Ray's workers all run on the fresh venv's interpreter.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "flwr_byz"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
APP_SOURCE = ROOT / "simulations" / "paper"  # packaged as flwr_byz/flower/paper/app (a symlink to it)
APP_IN_WHEEL = f"{PACKAGE}/flower/paper/app"

NEWER_STDLIB = {"tomllib": (3, 11)}
"""Standard-library modules younger than some Python a package might claim to support: the version they need."""

RUNTIME_ONLY: set[str] = set()
"""Declared dependencies that flwr_byz needs without importing them (none today)."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, str]:
    """Normalized distribution name -> requirement, for pyproject's ``[project] dependencies``."""
    out = {}
    for req in PYPROJECT["project"]["dependencies"]:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        assert match, f"cannot read the requirement {req!r}"
        out[normalize(match.group(1))] = req
    return out


def absolute_imports(root: Path = ROOT):
    """``(top-level module, "file:line")`` for every absolute import in ``root/flwr_byz``: module level, in
    functions and under TYPE_CHECKING alike."""
    for path in sorted((root / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield name.split(".")[0], f"{path.relative_to(root)}:{node.lineno}"


def third_party_imports(root: Path = ROOT) -> dict[str, list[str]]:
    """Top-level module -> where it is imported, for every module neither in the standard library nor flwr_byz."""
    found: dict[str, list[str]] = {}
    for top, where in absolute_imports(root):
        if top != PACKAGE and top not in sys.stdlib_module_names:
            found.setdefault(top, []).append(where)
    return found


# --- dependencies ----------------------------------------------------------------------------------------------

def test_every_imported_package_is_declared():
    dists = importlib.metadata.packages_distributions()
    deps = declared()
    missing, unknown = [], []
    for module, where in sorted(third_party_imports().items()):
        candidates = {normalize(d) for d in dists.get(module, [])}
        if not candidates:
            unknown.append(f"{module} (imported at {', '.join(where[:3])}) is not installed here, so its "
                           "distribution is unknown")
        elif not candidates & deps.keys():
            missing.append(f"{module} (distribution {' or '.join(sorted(candidates))}; imported at "
                           f"{', '.join(where[:3])})")
    assert not unknown, "\n".join(unknown)
    assert not missing, "imported but not in pyproject's [project] dependencies:\n" + "\n".join(missing)


def test_every_declared_dependency_is_imported():
    dists = importlib.metadata.packages_distributions()
    used = {normalize(d) for module in third_party_imports() for d in dists.get(module, [])}
    unused = sorted(set(declared()) - used - RUNTIME_ONLY)
    assert not unused, f"declared but never imported by {PACKAGE} (drop them, or list them in RUNTIME_ONLY): {unused}"


def newer_stdlib_imports() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for top, where in absolute_imports():
        if top in NEWER_STDLIB:
            found.setdefault(top, []).append(where)
    return found


def test_requires_python_covers_the_standard_library_used():
    spec = PYPROJECT["project"]["requires-python"]
    match = re.search(r">=\s*(\d+)\.(\d+)", spec)
    assert match, f"requires-python {spec!r} has no lower bound"
    floor = (int(match.group(1)), int(match.group(2)))
    too_new = [f"{m} needs Python {'.'.join(map(str, NEWER_STDLIB[m]))} (imported at {', '.join(w[:2])})"
               for m, w in newer_stdlib_imports().items() if NEWER_STDLIB[m] > floor]
    assert not too_new, f"requires-python = {spec!r}, but:\n" + "\n".join(too_new)


def test_the_checker_sees_an_undeclared_import(tmp_path):
    (tmp_path / PACKAGE).mkdir()
    (tmp_path / PACKAGE / "x.py").write_text("import os\nfrom rich.progress import Progress\n"
                                             "def f():\n    import flwr_byz.x, numpy as np\n")
    assert third_party_imports(tmp_path) == {"rich": [f"{PACKAGE}/x.py:2"], "numpy": [f"{PACKAGE}/x.py:4"]}


# --- the wheel -------------------------------------------------------------------------------------------------

def copy_sources(dest: Path) -> Path:
    """What the build reads (pyproject, README, the package, the paper app the package links to), copied so the
    build's ``build/`` folder never lands in (or goes stale in) the checkout. Symlinks stay symlinks."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "results", ".flwr*")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / PACKAGE, dest / PACKAGE, symlinks=True, ignore=ignore)
    shutil.copytree(APP_SOURCE, dest / APP_SOURCE.relative_to(ROOT), symlinks=True, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = copy_sources(tmp / "src")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (path,) = (tmp / "dist").glob("flwr_byz-*.whl")
    return path


def test_the_wheel_ships_the_paper_app(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        expected = {"pyproject.toml"} | {f"{d}/{p.name}" for d in ("configs", "sweeps")
                                         for p in (APP_SOURCE / d).glob("*.toml")}
        assert {"configs/mnist-logreg.toml", "sweeps/smoke.toml"} <= expected
        missing = sorted(f"{APP_IN_WHEEL}/{n}" for n in expected if f"{APP_IN_WHEEL}/{n}" not in names)
        assert not missing, f"{wheel.name} lacks the paper app's files: {missing}"
        for name in expected:  # the checkout's files themselves, not some other copy
            assert zf.read(f"{APP_IN_WHEEL}/{name}") == (APP_SOURCE / name).read_bytes(), name
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = {normalize(re.match(r"[A-Za-z0-9._-]+", line.split(":", 1)[1].strip()).group(0))
                for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert requires == set(declared())


def console_script(bin_dir: Path, python: Path, name: str, target: str) -> None:
    module, _, attr = target.split("[")[0].strip().partition(":")  # "module:attr [extras]"
    path = bin_dir / name
    path.write_text(f"#!{python}\nimport sys\nfrom {module} import {attr.split('.')[0]} as _entry\n"
                    f"if __name__ == '__main__':\n    sys.exit(_entry{''.join('.' + a for a in attr.split('.')[1:])}())\n")
    path.chmod(0o755)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed (not editable) and this interpreter's packages reused."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    # Installed before the .pth exists: pip then sees no flwr-byz at all (never the checkout's editable one).
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                          "--force-reinstall", "--no-index", "-q", str(wheel)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "_flwr_byz_test_reuse.pth").write_text("".join(f"{p}\n" for p in ours))
    bin_dir = venv / "bin"
    for dist in importlib.metadata.distributions():
        if normalize(dist.metadata["Name"] or "") == "flwr-byz":
            continue
        for ep in dist.entry_points.select(group="console_scripts"):
            if not (bin_dir / ep.name).exists():
                console_script(bin_dir, python, ep.name, ep.value)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONSAFEPATH")}
    outer_bins = {str(Path(sys.executable).parent), sysconfig.get_path("scripts")}
    env["PATH"] = os.pathsep.join([str(bin_dir)] + [p for p in env.get("PATH", "").split(os.pathsep)
                                                    if p and p not in outer_bins])
    assert not venv.is_relative_to(ROOT)
    return {"venv": venv, "python": python, "bin": bin_dir, "purelib": purelib, "env": env}


def run(installed: dict, *args: str, out_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``args`` in the fresh venv's environment, from an empty folder outside the checkout; on failure the
    message carries the output and the run logs left in ``out_dir``."""
    cwd = Path(tempfile.mkdtemp(dir=installed["venv"].parent, prefix="cwd-"))
    out = subprocess.run([*args], cwd=cwd, env=installed["env"], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        logs = "".join(f"\n--- {p}:\n{p.read_text(errors='replace')[-3000:]}" for pattern in ("*.log", "*.failed.json")
                       for p in sorted(out_dir.rglob(pattern)) if ".flwr-home" not in p.parts)
        pytest.fail(f"{' '.join(args)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}{logs}")
    return out


def test_the_fresh_venv_imports_the_wheel_not_the_checkout(installed, tmp_path):
    out = run(installed, str(installed["python"]), "-c",
              "import json, flwr_byz, flwr_byz.flower.paper as p, importlib.metadata as m; print(json.dumps("
              "[flwr_byz.__file__, str(p.APP_DIR), p.APP_DIR.is_symlink(), str(m.distribution('flwr-byz')._path)]))",
              out_dir=tmp_path)
    package, app, is_link, dist = json.loads(out.stdout.strip().splitlines()[-1])
    purelib = installed["purelib"]
    assert Path(package).is_relative_to(purelib), f"flwr_byz comes from {package}, not the wheel in {purelib}"
    assert Path(dist).is_relative_to(purelib), dist
    assert not is_link and Path(app).is_relative_to(purelib)
    assert (Path(app) / "pyproject.toml").is_file() and (Path(app) / "sweeps" / "smoke.toml").is_file()
    assert not Path(package).is_relative_to(ROOT)


STRESS = ["stress", "--task", "mnist-logreg", "--rounds", "2", "--attacks", "sf", "--f", "1", "--nodes", "4",
          "--eval-every", "1"]


def completed_results(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.jsonl"))
    for path in files:
        last = json.loads(path.read_text().splitlines()[-1])
        assert last.get("complete") is True, f"{path} has no completion footer"
    return files


@pytest.mark.flower
def test_installed_stress_through_flwr_run(installed, tmp_path):
    out = run(installed, str(installed["bin"] / "flwr-byz"), *STRESS, "--out", str(tmp_path / "out"), out_dir=tmp_path)
    files = completed_results(tmp_path / "out")
    assert len(files) == 1 and "sf" in files[0].name, out.stdout + out.stderr


def test_installed_sweep_of_the_packaged_smoke_spec_by_name(installed, tmp_path):
    """`flwr-byz sweep smoke`: the spec named ``smoke`` is the wheel's ``flower/paper/app/sweeps/smoke.toml``
    (the working folder is empty, so no local file can answer to that name); made smoke-sized with --set. Its runs
    go through the engine (on Ray), the main job above through `flwr run`: both paths of the installed package."""
    assert (installed["purelib"] / APP_IN_WHEEL / "sweeps" / "smoke.toml").is_file()
    out = run(installed, str(installed["bin"] / "flwr-byz"), "sweep", "smoke", "--out", str(tmp_path / "sweep"),
              "--set", "rounds=2", "seed=[1]", 'attack=["sf"]', "num-byzantine=[1]", "eval-every=1", out_dir=tmp_path)
    files = completed_results(tmp_path / "sweep")
    assert len(files) == 2, out.stdout + out.stderr  # nnm+cm and nnm+gm at f = 1 under SF, one seed
    assert (tmp_path / "sweep" / "report").is_dir()
