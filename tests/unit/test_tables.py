import csv
import io
import json
import math

import pytest

from dmlrepro.config import load_params, run_dir
from dmlrepro.errors import DmlReproError
from dmlrepro.tables import build_table, load_table, mean_ci95, write_table
from conftest import REPO


def test_mean_ci95_matches_student_t():
    mean, half = mean_ci95([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-4)
    assert math.isnan(mean_ci95([0.5])[1])


@pytest.fixture
def params(tmp_path):
    params = load_params(REPO / "params.yaml")
    params["paths"].update({"runs": str(tmp_path / "runs"), "tables": str(tmp_path / "tables"),
                            "papers": str(tmp_path / "papers")})
    params["experiment"]["seeds"] = [0, 1]
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "demo.yaml").write_text("""
paper: demo
title: Demo
tables:
  t1:
    caption: A demo.
    columns:
      - {key: r1, dataset: glyphs, metric: recall@1, header: R@1}
    rows:
      - {label: Triplet, method: triplet, published: {r1: 54.4}}
      - {label: Frozen, method: frozen}
""")
    for method, values in {"triplet": (0.5, 0.7), "frozen": (0.4, 0.4)}.items():
        for seed, v in enumerate(values):
            d = run_dir(params, "glyphs", method, seed)
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"test": {"recall@1": v}}))
    return params


def test_table_has_mean_ci_and_published_value(params):
    md, csv_text = build_table(params, "demo", "t1", load_table(params, "demo/t1")[2])
    assert "| Triplet | 60.0 ± 127.1 (54.4) |" in md
    assert "| Frozen | 40.0 ± 0.0 |" in md
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert rows[0]["r1_mean"] == "60.0" and rows[0]["r1_published"] == "54.4" and rows[0]["r1_n"] == "2"


def test_write_table_writes_both_files(params, tmp_path):
    written = write_table(params, "demo/t1")
    assert [p.suffix for p in written] == [".md", ".csv"] and all(p.exists() for p in written)


def test_missing_run_names_the_command_to_run(params):
    params["experiment"]["seeds"] = [0, 1, 2]
    with pytest.raises(DmlReproError, match="dmlrepro evaluate --dataset glyphs --method triplet --seed 2"):
        write_table(params, "demo/t1")


def test_declaration_errors(params, tmp_path):
    with pytest.raises(DmlReproError, match="declares no table 'nope'"):
        load_table(params, "demo/nope")
    with pytest.raises(DmlReproError, match="PAPER/TABLE"):
        load_table(params, "demo")
    (tmp_path / "papers" / "bad.yaml").write_text(
        "paper: bad\ntitle: x\ntables:\n  t:\n    columns: [{key: a, dataset: glyphs, metric: recall@1}]\n"
        "    rows: [{label: X, method: unknown_method}]\n")
    with pytest.raises(DmlReproError, match="unknown_method"):
        load_table(params, "bad/t")
