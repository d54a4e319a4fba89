"""The README's self-contained Python examples run as written."""

import re

import pytest

from conftest import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
STANDALONE = [b for b in BLOCKS if b.startswith("import ")]


def test_there_are_standalone_examples():
    assert len(STANDALONE) >= 2


@pytest.mark.parametrize("block", STANDALONE, ids=lambda b: b.splitlines()[1][:40])
def test_example_runs(block):
    exec(compile(block, "README.md", "exec"), {})
