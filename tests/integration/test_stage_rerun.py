"""A code edit reruns the jobs of the stages whose command runs the edited module, and the jobs
downstream of them, nothing else (issue 22): a real `snakemake` builds a tiny table and its claims
page, then dry runs plan what an edit of one module reruns; `dvc status` names the same stages.

Which modules each stage runs is computed from the imports (dmlrepro.study.stages.stage_modules):
the test takes the lists as the workspace computes them and checks that both engines obey them.
"""
from __future__ import annotations

import os
import re

import pytest

from dmlrepro.study.stages import STAGES, job_counts, stage_modules
from conftest import run
from mini_study import make_mini_study

pytestmark = pytest.mark.integration

PAPER = """
paper: rerunmini
title: Rerun mini study
tables:
  t:
    caption: The frozen backbone and Triplet.
    columns:
      - {key: r1, dataset: glyphs, metric: recall@1, header: R@1}
    rows:
      - {label: Frozen, method: frozen, published: {r1: 40.0}}
      - {label: Triplet, method: triplet, published: {r1: 50.0}}
    claims:
      - {base: Frozen, method: Triplet}
"""
#: What each stage's jobs read from (the rules' inputs): a rerun job reruns the jobs after it.
UPSTREAM = {"prepare": [], "extract": ["prepare"], "train": ["extract", "prepare"], "evaluate": ["train"],
            "table": ["evaluate"], "figure": ["evaluate"], "claims": ["table"]}
BUILT = {"prepare", "extract", "train", "evaluate", "table", "claims"}  # this study's rules (no figure)


def downstream(stages: set[str]) -> set[str]:
    found = set(stages)
    while True:
        more = {s for s, before in UPSTREAM.items() if s not in found and found & set(before)}
        if not more:
            return found
        found |= more


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The study, built (the Snakefile's onsuccess records it in DVC), and each stage's module list."""
    ws = make_mini_study(tmp_path_factory.mktemp("rerun"), PAPER, ("frozen", "triplet"))
    run(["snakemake", "--cores", "2"], ws)
    assert "up to date" in run(["dvc", "status"], ws).stdout
    return ws, {stage: set(stage_modules(stage, ws)) for stage in STAGES}


def planned(ws) -> set[str]:
    counts = job_counts(run(["snakemake", "--cores", "2", "-n"], ws).stdout)
    return {rule for rule in counts if rule not in ("all", "total")}


def dvc_changed(ws) -> set[str]:
    return {line.rstrip(":").split("-")[0] for line in run(["dvc", "status"], ws).stdout.splitlines()
            if line and not line.startswith(("\t", " ")) and re.match(r"[a-z]+-", line)}


def check_edit(ws, lists, module: str) -> set[str]:
    """Append a comment to `module`: Snakemake plans the jobs of the stages that list it and their
    downstream ones, DVC names those stages; the module is then restored (content and time)."""
    users = {stage for stage, files in lists.items() if module in files} & BUILT
    path = ws / module
    text, stat = path.read_text(), path.stat()
    path.write_text(text + "\n# an edit\n")
    try:
        assert planned(ws) == downstream(users) & BUILT, module
        assert dvc_changed(ws) == users, module
    finally:
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return users


def test_the_build_is_complete(built):
    ws, _ = built
    assert (ws / "results/claims/rerunmini.md").exists()
    assert planned(ws) == set()


def test_a_module_only_the_table_runs_reruns_the_table_and_the_claims_page(built):
    ws, lists = built
    only_table = sorted(f for f in lists["table"] if sum(f in files for files in lists.values()) == 1)
    assert only_table, "no module is the table stage's alone"
    # the entry module stages/table.py is one; prefer the code it calls (e.g. reporting/tables.py)
    module = next((f for f in only_table if "/stages/" not in f), only_table[0])
    assert check_edit(ws, lists, module) == {"table"}


def test_a_method_edit_reruns_no_prepare(built):
    ws, lists = built
    methods = sorted(f for files in lists.values() for f in files if "/methods/" in f)
    assert methods and not any("/methods/" in f for f in lists["prepare"])
    users = check_edit(ws, lists, methods[0])
    assert "prepare" not in users and "train" in users
