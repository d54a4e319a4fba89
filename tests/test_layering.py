"""Dependencies point one way: every import in flwr_byz (read with ``ast``, not executed) goes down the layers.

Layers, lowest first (DESIGN.md section 1):

- core: ``flat``, ``seeds``, ``attack_traits`` < ``aggregation`` < ``attacks`` < ``tasks``, ``adversary_config``
  < ``settings`` < ``dsgd``, ``results``, ``node_data``
  (a lower one never imports a higher one); no Flower, no Ray;
- ``engine``: the core only; no Flower, no Ray;
- ``flower`` (with ``flower.paper``): the core only (never the engine);
- ``runs``: core, engine, flower;
- ``studies``: everything above but the cli;
- ``cli``: everything.

Every import counts: module level, inside functions (lazy imports are still dependencies), and under
``if TYPE_CHECKING:`` (an annotation that names an upper layer couples the lower one to it: type checkers,
docs and ``typing.get_type_hints`` follow it), and ``importlib.import_module("flwr_byz...")`` with a literal name.
A module the layer map does not know fails too, so a new package must be placed in a layer.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "flwr_byz"
ROOT = Path(__file__).resolve().parents[1]

CORE = [("flat", "seeds", "attack_traits"), ("aggregation",), ("attacks",), ("tasks", "adversary_config"),
        ("settings",), ("dsgd", "results", "node_data")]
"""The core's sub-layers, lowest first; units in one tuple are at the same height. ``attack_traits`` (the torch-free
table the attack classes read their traits from) sits at the bottom; ``adversary_config`` (the Byzantine ClientApp's
run-config schema, which builds attacks) above the attacks and below ``settings``, which re-exports it."""

FORBIDDEN_BELOW_FLOWER = frozenset({"flwr", "ray"})
"""Third-party top-level packages the core and the engine must not import."""


@dataclass(frozen=True)
class LayerMap:
    """Which unit (``flwr_byz.<first name>``) each module belongs to and which units each unit may import."""

    unit_of: dict[str, str]  # first name after ``flwr_byz.`` -> unit
    allowed: dict[str, frozenset[str]]  # unit -> units it may import (itself included)
    pure: frozenset[str]  # units that must not import FORBIDDEN_BELOW_FLOWER

    def unit(self, module: str) -> str | None:
        """The unit of ``module`` (a dotted name inside the package), None when the map lacks it."""
        parts = module.split(".")
        if parts[0] != PACKAGE:
            raise ValueError(module)
        return self.unit_of.get(parts[1] if len(parts) > 1 else "")


def layer_map(core=CORE, engine=("engine",), flower=("flower",), runs=("runs",), studies=("studies",),
              cli=("cli",)) -> LayerMap:
    """The layer map for the given names of each layer's top-level modules/packages (so the same rules can be
    read against an older layout)."""
    unit_of: dict[str, str] = {"": "core:root"}  # the package's own __init__: below everything
    allowed: dict[str, frozenset[str]] = {"core:root": frozenset({"core:root"})}
    below: set[str] = {"core:root"}
    for level in core:
        here = {f"core:{name}" for name in level}
        for name in level:
            unit_of[name] = f"core:{name}"
        for unit in here:
            allowed[unit] = frozenset(below | here)
        below |= here
    core_units = frozenset(below)
    stack = [("engine", engine, core_units), ("flower", flower, core_units)]
    for layer, names, base in stack:
        for name in names:
            unit_of[name] = layer
        allowed[layer] = frozenset(base | {layer})
    upper = core_units | {"engine", "flower"}
    for layer, names in (("runs", runs), ("studies", studies), ("cli", cli)):
        upper = upper | {layer}
        for name in names:
            unit_of[name] = layer
        allowed[layer] = frozenset(upper)
    return LayerMap(unit_of, allowed, frozenset(core_units | {"engine"}))


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _literal_import(node: ast.Call) -> str | None:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
        return node.args[0].value
    return None


def imports(path: Path, root: Path, modules: set[str]) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``path`` (relative ones resolved; ``from a import b``
    gives ``a.b`` when that is a module of the package, else ``a``)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in modules else target))
        elif isinstance(node, ast.Call) and (literal := _literal_import(node)):
            found.append((node.lineno, literal))
    return sorted(set(found))


def violations(root: Path, layers: LayerMap) -> list[str]:
    """Every import edge in ``root/flwr_byz`` that runs up (or sideways between engine and flower), every
    Flower/Ray import in the core or the engine, and every module the map does not place: ``file:line: ...``."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    modules |= {m.rpartition(".")[0] for m in modules if "." in m}
    problems: list[str] = []
    for path in files:
        rel = path.relative_to(root)
        source = module_name(path, root)
        src_unit = layers.unit(source)
        if src_unit is None:
            problems.append(f"{rel}:1: {source} is in no layer (add it to the layer map)")
            continue
        for line, target in imports(path, root, modules):
            top = target.split(".")[0]
            if top == PACKAGE:
                dst_unit = layers.unit(target)
                if dst_unit is None:
                    problems.append(f"{rel}:{line}: {src_unit} -> {target}, which is in no layer")
                elif dst_unit not in layers.allowed[src_unit]:
                    problems.append(f"{rel}:{line}: {src_unit} -> {dst_unit} (imports {target})")
            elif top in FORBIDDEN_BELOW_FLOWER and src_unit in layers.pure:
                problems.append(f"{rel}:{line}: {src_unit} -> {top} (the core and the engine never import "
                                f"Flower or Ray)")
    return problems


LAYERS = layer_map()


def test_the_map_places_every_top_level_module():
    names = {p.stem if p.suffix == ".py" else p.name for p in (ROOT / PACKAGE).iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert names <= set(LAYERS.unit_of), f"not in the layer map: {sorted(names - set(LAYERS.unit_of))}"


def test_imports_point_down_the_layers():
    problems = violations(ROOT, LAYERS)
    assert not problems, "imports that run back up the layers:\n" + "\n".join(problems)


def test_the_checker_sees_an_upward_edge(tmp_path):
    """The checker itself can fail: an engine module importing the runs layer, lazily and under
    TYPE_CHECKING, a core module importing flwr, and a relative import from the core into flower."""
    pkg = tmp_path / PACKAGE
    for sub in ("engine", "runs", "flower", "aggregation"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "runs" / "store.py").write_text("")
    (pkg / "flower" / "records.py").write_text("")
    (pkg / "engine" / "runner.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from flwr_byz.runs.store import Store\n"
        "def f():\n    import flwr_byz.runs.store\n")
    (pkg / "aggregation" / "mean.py").write_text("import flwr.app\nfrom ..flower import records\n")
    (pkg / "runs" / "ok.py").write_text("from flwr_byz.engine import runner\nimport flwr, ray\n")
    problems = violations(tmp_path, LAYERS)
    assert problems == [
        f"{PACKAGE}/aggregation/mean.py:1: core:aggregation -> flwr (the core and the engine never import "
        "Flower or Ray)",
        f"{PACKAGE}/aggregation/mean.py:2: core:aggregation -> flower (imports flwr_byz.flower.records)",
        f"{PACKAGE}/engine/runner.py:3: engine -> runs (imports flwr_byz.runs.store)",
        f"{PACKAGE}/engine/runner.py:5: engine -> runs (imports flwr_byz.runs.store)",
    ]


def test_the_map_orders_the_core_and_separates_engine_from_flower():
    allowed = LAYERS.allowed
    assert "core:aggregation" in allowed["core:attacks"] and "core:attacks" not in allowed["core:aggregation"]
    assert "core:seeds" in allowed["core:flat"] and "core:settings" not in allowed["core:tasks"]
    assert "engine" not in allowed["flower"] and "flower" not in allowed["engine"]
    assert {"engine", "flower"} <= allowed["runs"] and "cli" not in allowed["studies"]
