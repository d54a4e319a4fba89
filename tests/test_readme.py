"""The self-contained Python examples of the README and the user guide run as written."""

import re

import pytest

from conftest import ROOT


def standalone(path) -> list[str]:
    return [b for b in re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S) if b.startswith("import ")]


STANDALONE = standalone(ROOT / "README.md")
GUIDE = standalone(ROOT / "docs/guide.md")


def test_there_are_standalone_examples():
    assert len(STANDALONE) >= 2 and len(GUIDE) >= 2


@pytest.mark.parametrize("block", list(dict.fromkeys(STANDALONE + GUIDE)), ids=lambda b: b.splitlines()[1][:40])
def test_example_runs(block):
    exec(compile(block, "README.md", "exec"), {})
