"""The set-up the method pipeline tests share: a workspace whose study is one paper's table, on one
seed, with only the methods its rows use.

A fixture here, imported by the tests that use it (``from mini_study import mini_study``), not in a
tests/integration/conftest.py: pytest imports every conftest.py outside a package under the one name
``conftest``, so a second one would take the place of tests/conftest.py for the tests' own
``from conftest import ...``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pytest
import yaml

from conftest import make_workspace, tiny_params


def make_mini_study(path: Path, paper_text: str, methods: Sequence[str], table: str = "t") -> Path:
    """A fresh workspace in `path` whose params.yaml selects the paper's table alone (no figure), on
    seed 0, with only `methods`; the paper's declaration replaces the repository's."""
    paper = yaml.safe_load(paper_text)["paper"]
    params = tiny_params(methods=tuple(methods), seeds=(0,))
    params.update({"tables": [f"{paper}/{table}"], "figures": []})
    return make_workspace(path, params, papers={paper: paper_text})


@pytest.fixture
def mini_study(tmp_path) -> Callable[..., Path]:
    """mini_study(paper_text, methods, table="t") -> make_mini_study's workspace, in tmp_path."""
    return lambda paper_text, methods, table="t": make_mini_study(tmp_path, paper_text, methods, table)
