"""Sphinx configuration of the flwr-byz docs: MyST Markdown pages, a reference generated from the code."""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # the checkout's flwr_byz, also when it is not installed

project = "flwr-byz"
author = "flwr-byz developers"
copyright = "flwr-byz developers, Apache-2.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style "Attributes:" / "Args:" sections in docstrings
    "sphinx.ext.mathjax",
    "flwr_byz_docs",  # docs/_ext: the generated reference (rules, attacks, run-config keys, CLI, API)
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "audit-userapp/**/*.md"]

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"

napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = "flwr-byz"
html_static_path: list[str] = []
