"""Sphinx directives that generate the reference from the code, so it cannot drift from it.

* ``.. flwr-byz-stages:: rules`` / ``pre-aggregators``: every entry of ``RULES`` / ``PRE_AGGREGATORS``
  (``flwr_byz.aggregation.pipeline``), with its spec name, precondition, parameters and class docstring;
* ``.. flwr-byz-attacks::``: every entry of ``ATTACKS`` (``flwr_byz.attacks.registry``) with its traits;
* ``.. flwr-byz-fields:: flwr_byz.settings.RunSettings``: a dataclass's fields as run-config keys (kebab
  case), with their types, defaults and attribute docstrings (a field without one is a build warning);
* ``.. flwr-byz-task-defaults::``: the tasks' paper hyper-parameters (``Task.defaults``);
* ``.. flwr-byz-cli::``: the ``flwr-byz`` command and every subcommand, from its argparse parser;
* ``.. flwr-byz-module:: flwr_byz.flower``: autodoc of a module's ``__all__`` (or ``:members:``), leaving out
  the registered rules and attacks, which ``flwr-byz-stages`` and ``flwr-byz-attacks`` document.

Each directive writes reStructuredText and feeds it back to the parser, so a rule, attack, key or option
added to the code appears in the site at the next build.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import sys
import typing
from collections.abc import Iterable

from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


def qualname(obj: object) -> str:
    """The dotted path autodoc imports ``obj`` from: its public package where it re-exports it."""
    module = obj.__module__
    package = module.rsplit(".", 1)[0]
    public = importlib.import_module(package)
    if getattr(public, obj.__name__, None) is obj and obj.__name__ in getattr(public, "__all__", ()):
        module = package
    return f"{module}.{obj.__qualname__}"


def parameters(cls: type, skip: Iterable[str] = ("self", "f")) -> str:
    """``name=default`` of a class's constructor, as inline literals."""
    items = []
    for p in inspect.signature(cls).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        items.append(f"``{p.name}`` (required)" if p.default is p.empty else f"``{p.name}={p.default!r}``")
    return ", ".join(items) or "none"


def requirement(cls: type) -> str:
    """A stage's precondition on ``n``: its class attribute, or (a property) that of its default parameters."""
    stated = inspect.getattr_static(cls, "requirement")
    if isinstance(stated, str):
        return stated
    return f"{cls(1).requirement} (with the default parameters; see below)"


def heading(text: str, char: str) -> list[str]:
    return [text, char * max(len(text), 4), ""]


class Generated(SphinxDirective):
    """Writes reStructuredText lines into the document where the directive stands."""

    def run(self) -> list:
        lines = self.lines()
        source = f"<{self.name}>"
        self.state_machine.insert_input(StringList(lines, source), source)
        return []

    def lines(self) -> list[str]:
        raise NotImplementedError


class Stages(Generated):
    """Every registered rule or pre-aggregator, in the registry's order."""

    required_arguments = 1
    option_spec = {"heading": directives.unchanged}

    def lines(self) -> list[str]:
        from flwr_byz.aggregation import pipeline

        kind = self.arguments[0]
        registry = {"rules": pipeline.RULES, "pre-aggregators": pipeline.PRE_AGGREGATORS}[kind]
        char = self.options.get("heading", "-")
        out: list[str] = []
        for name, cls in registry.items():
            out += [f".. _stage-{name}:", ""]
            out += heading(f"``{name}`` ({cls.__name__})", char)
            example = f'"{name}+cm"' if kind == "pre-aggregators" else f'"{name}"' if name == "mean" else \
                f'"{name}", "nnm+{name}"'
            out += [f":Spec: {', '.join(f'``{e.strip()}``' for e in example.split(','))}",
                    f":Precondition: {requirement(cls)}",
                    f":Parameters: {parameters(cls)}", "",
                    f".. autoclass:: {qualname(cls)}", ""]
        return out


class Attacks(Generated):
    """Every registered attack, in the registry's order, with the traits a Byzantine node needs."""

    option_spec = {"heading": directives.unchanged}

    def lines(self) -> list[str]:
        from flwr_byz.attacks.registry import ATTACKS

        char = self.options.get("heading", "-")
        out: list[str] = []
        for name, cls in ATTACKS.items():
            needs = [text for flag, text in ((cls.needs_loss, "the honest loss (``ctx.honest_loss``)"),
                                             (cls.needs_flipped, "the flipped-label vector (``ctx.flipped``)"))
                     if flag] or ["the honest vectors and the context only"]
            shared = ("yes: every Byzantine node sends the same vector, computed once per round" if cls.shared
                      else "no: each Byzantine node computes its own vector")
            out += [f".. _attack-{name}:", ""]
            out += heading(f"``{name}`` ({cls.__name__})", char)
            out += [f":Run config: ``attack = \"{name}\"``",
                    f":Parameters: {parameters(cls, skip=('self',))} (``attack-params``)",
                    f":Shared: {shared}",
                    f":Needs: {', '.join(needs)}", "",
                    f".. autoclass:: {qualname(cls)}", ""]
        return out


def type_name(hint: object) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "").replace("NoneType", "None")


class Fields(Generated):
    """A dataclass's fields as run-config keys, with the attribute docstring written under each field."""

    required_arguments = 1
    option_spec = {"none-means": directives.unchanged, "target-prefix": directives.unchanged}

    def lines(self) -> list[str]:
        path = self.arguments[0]
        module_name, cls_name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module_name), cls_name)
        docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        hints = typing.get_type_hints(cls)
        none_means = self.options.get("none-means", "``auto``")
        prefix = self.options.get("target-prefix", "key-")
        out = [".. list-table::", "   :header-rows: 1", "   :widths: 18 14 12 56", "",
               "   * - key", "     - type", "     - default", "     - meaning"]
        for field in dataclasses.fields(cls):
            doc = docs.get((cls_name, field.name))
            if not doc or not "".join(doc).strip():
                logger.warning(f"{path}.{field.name} has no docstring: write one under the field "
                               "(it is the run-config reference)", location=(self.env.docname, self.lineno))
                doc = [""]
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            shown = none_means if default is None else f"``{json.dumps(default)}``"
            kind = type_name(hints[field.name])
            if default is None and none_means == "``auto``":
                kind = kind.replace(" | None", "") + ' or "auto"'
            key = field.name.replace("_", "-")
            out += [f"   * - .. _{prefix}{key}:", "", f"       ``{key}``",
                    f"     - ``{kind}``", f"     - {shown}",
                    f"     - {doc[0]}"] + [f"       {line}" for line in doc[1:]]
        return out + [""]


class TaskDefaults(Generated):
    """The tasks and the paper hyper-parameters ``auto`` keys resolve to (``Task.defaults``)."""

    def lines(self) -> list[str]:
        from flwr_byz.tasks import TASKS, get_task

        tasks = {name: get_task(name) for name in TASKS}
        keys = list(dict.fromkeys(key for task in tasks.values() for key in task.defaults))
        out = [".. list-table::", "   :header-rows: 1", "", "   * - task", "     - dataset",
               *[f"     - ``{key.replace('_', '-')}``" for key in keys],
               "     - JUMP sample (loss, screening)"]
        for name, task in tasks.items():
            out += [f"   * - ``{name}``", f"     - {task.dataset or '(synthetic)'}",
                    *[f"     - {task.defaults.get(key, '')}" for key in keys],
                    f"     - {task.jump_sample[0]}, {task.jump_sample[1]}"]
        return out + [""]


def option_lines(action: argparse.Action) -> list[str]:
    if action.option_strings:
        metavar = "" if action.nargs == 0 else " " + (action.metavar or action.dest.upper())
        if action.nargs == "*":
            metavar = f" [{(action.metavar or action.dest.upper())} ...]"
        names = ", ".join(f"{opt}{metavar}" for opt in action.option_strings)
    else:
        names = action.metavar or action.dest
    text = (action.help or "").replace("`", "``").replace("````", "``") if action.help else ""
    extra = []
    if action.choices:
        extra.append("choices: " + ", ".join(f"``{c}``" for c in action.choices))
    if action.option_strings and action.default not in (None, argparse.SUPPRESS, [], False) \
            and not isinstance(action, argparse.BooleanOptionalAction):
        extra.append(f"default: ``{action.default}``")
    body = "; ".join(filter(None, [text.rstrip("."), *extra])) or "(no help)"
    return [f".. option:: {names}", "", f"   {body}", ""]


class Cli(Generated):
    """``flwr-byz`` and each subcommand: usage, description and options, from ``flwr_byz.cli.build_parser``."""

    option_spec = {"heading": directives.unchanged}

    def lines(self) -> list[str]:
        from flwr_byz.cli import build_parser

        char = self.options.get("heading", "-")
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        helps = {choice.dest: choice.help for choice in sub._choices_actions}
        out = [".. program:: flwr-byz", "", ".. code-block:: text", ""]
        out += [f"   {line}" for line in parser.format_usage().strip().splitlines()] + [""]
        for name, command in sub.choices.items():
            out += [f".. _cli-{name}:", ""]
            out += heading(f"``flwr-byz {name}``", char)
            summary = helps.get(name, "").replace("`", "``").replace("````", "``")
            out += [summary[:1].upper() + summary[1:] + ".", "",
                    f".. program:: flwr-byz {name}", "", ".. code-block:: text", ""]
            out += [f"   {line}" for line in command.format_usage().strip().splitlines()] + [""]
            for action in command._actions:
                if isinstance(action, argparse._HelpAction):
                    continue
                out += option_lines(action)
        return out


class Module(Generated):
    """autodoc of a module's public names (``__all__`` or ``:members:``), minus the registered stages and attacks."""

    required_arguments = 1
    option_spec = {"members": directives.unchanged}

    def lines(self) -> list[str]:
        from flwr_byz.aggregation.pipeline import PRE_AGGREGATORS, RULES
        from flwr_byz.attacks.registry import ATTACKS

        registered = {*RULES.values(), *PRE_AGGREGATORS.values(), *ATTACKS.values()}
        name = self.arguments[0]
        module = importlib.import_module(name)
        members = self.options.get("members")
        names = [m.strip() for m in members.split(",")] if members else list(module.__all__)
        out = [f".. automodule:: {name}", "   :no-members:", ""]
        for member in names:
            obj = getattr(module, member)
            if obj in registered if isinstance(obj, type) else False:
                continue
            if inspect.isclass(obj):
                out += [f".. autoclass:: {name}.{member}", "   :members:", ""]
            elif callable(obj):
                out += [f".. autofunction:: {name}.{member}", ""]
            else:
                out += [f".. py:data:: {name}.{member}", "", *[f"   {line}" for line in data_doc(name, member, obj)], ""]
        return out


def data_doc(package: str, member: str, obj: object) -> list[str]:
    """The attribute docstring of a module-level constant (where the package or one of its modules defines it), or
    what it holds: a registry's names."""
    for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        try:
            doc = ModuleAnalyzer.for_module(module).find_attr_docs().get(("", member))
        except Exception:  # a module without source
            continue
        if doc and getattr(sys.modules[module], member, None) is obj:
            return list(doc)
    if isinstance(obj, dict):
        return [f"A ``dict`` of {len(obj)} entries: " + ", ".join(f"``{key}``" for key in obj) + "."]
    return [f"``{obj!r}``"]


def setup(app: Sphinx) -> dict:
    for name, directive in (("flwr-byz-stages", Stages), ("flwr-byz-attacks", Attacks),
                            ("flwr-byz-fields", Fields), ("flwr-byz-task-defaults", TaskDefaults),
                            ("flwr-byz-cli", Cli), ("flwr-byz-module", Module)):
        app.add_directive(name, directive)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
