"""The committed results are what the code prints from the committed metrics: every table under
results/tables/ and every claims page under results/claims/ is rebuilt from the runs' metrics.json
files under results/runs/ and compared byte for byte. A table built column by column (its legend says
"A partial build") is rebuilt as a partial table."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from dmlrepro.reporting.claims import write_claims_page
from dmlrepro.reporting.tables import build_table
from dmlrepro.study import load_study
from dmlrepro.study.params import load_params

REPO = Path(__file__).resolve().parents[2]
TABLES = sorted(p.relative_to(REPO / "results/tables").with_suffix("").as_posix()
                for p in (REPO / "results/tables").glob("*/*.md"))
CLAIMS = sorted(p.stem for p in (REPO / "results/claims").glob("*.md"))


@pytest.fixture(scope="module")
def study():
    """The repository's study, read from the repository root: its paths are relative, as committed
    pages print them."""
    here = Path.cwd()
    os.chdir(REPO)
    try:
        yield load_study(load_params(REPO / "params.yaml"))
    finally:
        os.chdir(here)


def test_the_repository_commits_tables_and_claims():
    assert {"iaa/table3", "da/main", "baselines/glyphs"} <= set(TABLES) and {"iaa", "da", "sgar"} <= set(CLAIMS)


@pytest.mark.parametrize("ref", TABLES)
def test_a_committed_table_is_what_the_committed_metrics_give(study, ref):
    folder = REPO / "results/tables"
    committed = [(folder / f"{ref}{suffix}").read_text() for suffix in (".md", ".csv", ".html")]
    partial = "A partial build" in committed[0]
    rebuilt = build_table(study.params, study.table(ref), partial=partial)
    for suffix, ours, theirs in zip((".md", ".csv", ".html"), rebuilt, committed):
        assert ours == theirs, f"results/tables/{ref}{suffix} is stale: run `dmlrepro table --table {ref}" \
                               f"{' --partial' if partial else ''} --no-mlflow`"


@pytest.mark.parametrize("paper", CLAIMS)
def test_a_committed_claims_page_is_what_the_committed_metrics_give(study, paper, tmp_path):
    params = copy.deepcopy(study.params)
    params["paths"]["tables"] = str(tmp_path / "tables")  # the claims page goes beside it: tmp_path/claims
    paths, _ = write_claims_page(load_study(params), paper)
    for path in paths:
        committed = REPO / "results/claims" / path.name
        assert path.read_text() == committed.read_text(), \
            f"results/claims/{path.name} is stale: run `dmlrepro claims --paper {paper} --no-mlflow`"
