"""Paper tables and the statistics behind a cell: expected numbers are computed by hand."""
import csv
import io
import math

import pytest

from dmlrepro.paths import table_paths
from dmlrepro.errors import DmlReproError
from dmlrepro.reporting.stats import format_cell, mean_ci
from dmlrepro.reporting.cells import metric_value
from dmlrepro.reporting.tables import build_table, write_table
from dmlrepro.study import load_study
from studyutil import study_params, write_metrics, write_paper

T_975 = {1: 12.706, 2: 4.303, 3: 3.182}  # Student t 0.975 quantiles, from a printed table


# ---------------------------------------------------------------------------------------------
# stats


def test_mean_ci_matches_student_t_by_hand():
    mean, half = mean_ci([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    # sd = 0.1 (sample), n = 3, df = 2
    assert half == pytest.approx(T_975[2] * 0.1 / math.sqrt(3), rel=1e-3)
    mean, half = mean_ci([0.5, 0.7])
    assert (mean, half) == (pytest.approx(0.6), pytest.approx(T_975[1] * math.sqrt(0.02) / math.sqrt(2), rel=1e-3))
    mean, half = mean_ci([0.1, 0.2, 0.3, 0.6])
    sd = math.sqrt(((0.2 - 0.3) ** 2 + (0.1 - 0.3) ** 2 + 0 + 0.3 ** 2) / 3)
    assert mean == pytest.approx(0.3) and half == pytest.approx(T_975[3] * sd / 2, rel=1e-3)


def test_mean_ci_of_one_value_has_no_interval_and_of_none_is_an_error():
    mean, half = mean_ci([0.42])
    assert mean == pytest.approx(0.42) and math.isnan(half)
    assert mean_ci([0.3, 0.3, 0.3]) == (pytest.approx(0.3), pytest.approx(0.0))
    with pytest.raises(ValueError):
        mean_ci([])


def test_mean_ci_interval_narrows_with_the_level():
    values = [0.51, 0.55, 0.49, 0.6]
    assert mean_ci(values, level=0.9)[1] < mean_ci(values)[1] < mean_ci(values, level=0.99)[1]


def test_format_cell():
    assert format_cell(0.5, float("nan"), 1) == "50.0 (n=1, single run)"
    assert format_cell(0.6, 0.02484, 3) == "60.0 ± 2.5 (n=3)"
    assert format_cell(0.6, 0.02484, 3, 54.4) == "60.0 ± 2.5 (n=3; paper 54.4)"
    assert format_cell(0.123, float("nan"), 1, 12) == "12.3 (n=1, single run; paper 12)"


# ---------------------------------------------------------------------------------------------
# tables

DEMO = """
tables:
  t1:
    caption: A demo.
    columns:
      - {key: r1, dataset: glyphs, metric: recall@1, header: R@1}
    rows:
      - {label: Triplet, method: triplet, published: {r1: 54.4}}
      - {label: Frozen, method: frozen}
"""


@pytest.fixture
def params(tmp_path):
    params = study_params(tmp_path, seeds=(0, 1))
    write_paper(params, DEMO)
    study = load_study(params)
    rows = {r.label: r for r in study.table("demo/t1").rows}
    for label, values in {"Triplet": (0.5, 0.7), "Frozen": (0.4, 0.4)}.items():
        for run, v in zip(rows[label].runs["glyphs"], values):
            write_metrics(params, run, test={"recall@1": v})
    return params


def test_table_has_mean_ci_and_published_value(params):
    md, csv_text, _ = build_table(params, load_study(params).table("demo/t1"))
    # mean 0.6, sd sqrt(0.02), n 2: half = 12.706 * 0.1 = 1.2706
    assert "| Triplet | 60.0 ± 127.1 (n=2; paper 54.4) |" in md
    assert "| Frozen | 40.0 (n=1, single run) |" in md  # deterministic: one run, not two equal seeds
    assert md.startswith("# demo/t1\n") and "A demo." in md and "Seeds [0, 1]" in md
    assert "| Method | glyphs R@1 |" in md
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["row"] for r in rows] == ["Triplet", "Frozen"]
    assert rows[0]["r1_mean"] == "60.0" and rows[0]["r1_published"] == "54.4" and rows[0]["r1_n"] == "2"
    assert float(rows[0]["r1_ci95"]) == pytest.approx(127.06, abs=0.01)
    assert rows[0]["run"] == "triplet" and rows[0]["protocol"] == "honest"
    assert rows[1]["r1_published"] == "" and rows[1]["r1_ci95"] == "" and rows[1]["r1_n"] == "1"


def test_the_legend_names_our_training_settings_read_from_the_runs(params):
    md, _, html = build_table(params, load_study(params).table("demo/t1"))
    # tiny_params: 2 epochs of 3 iterations, batch 16 of 4 per class, params.yaml's Adam at 1e-3, 512-d
    ours = ("Ours: a linear head to 512-d on frozen efficientnet_lite0 features; 2 epochs of 3 iterations, "
            "batch 16 (4 per class), adam, lr 0.001. Seeds [0, 1];")
    assert ours in md and ours in html
    assert "stand-in" not in md  # no column of demo/t1 stands in for a benchmark


def test_the_legend_says_which_datasets_and_rows_train_for_another_number_of_epochs(tmp_path):
    from dmlrepro.reporting.tables import settings_line

    params = study_params(tmp_path, datasets=("glyphs", "large"))
    params["methods"]["contrastive"]["train"] = {"epochs": 3}
    params["train_per_dataset"] = {"large": {"epochs": 5}}
    write_paper(params, "tables:\n  t:\n    columns: [{key: a, dataset: glyphs, metric: recall@1},\n"
                "              {key: b, dataset: large, metric: recall@1}]\n"
                "    rows: [{label: T, method: triplet}, {label: N, method: npair}, {label: C, method: contrastive},\n"
                "           {label: T9, method: triplet, overrides: {train.epochs: 9}}]\n")
    # by hand: on glyphs T and N train tiny_params' 2, C its own 3, T9 its declared 9; on large every
    # row trains the dataset's 5 but T9, whose declaration wins (9): C's 3 holds on glyphs only
    line = settings_line(params, load_study(params).table("demo/t"))
    assert "; 2 epochs (5 on large; 3 for C on glyphs; 9 for T9) of 3 iterations," in line
    params["train_per_dataset"] = {}
    assert "; 2 epochs (3 for C; 9 for T9) of 3 iterations," in settings_line(params, load_study(params).table("demo/t"))
    params["train"]["epochs"] = 3  # most runs (C's and T9's are few): the usual value is the runs', not params.yaml's alone
    assert "; 3 epochs (9 for T9) of 3 iterations," in settings_line(params, load_study(params).table("demo/t"))


def test_write_table_writes_markdown_csv_and_html(params):
    written = write_table(params, load_study(params).table("demo/t1"))
    assert written == list(table_paths(params, "demo", "t1"))
    assert [p.suffix for p in written] == [".md", ".csv", ".html"] and all(p.exists() for p in written)
    assert "<td>Triplet</td><td>60.0" in written[2].read_text()
    assert "| Triplet | 60.0" in written[0].read_text()


def test_missing_run_names_the_command_to_run(params):
    params["seeds"] = [0, 1, 2]
    table = load_study(params).table("demo/t1")
    with pytest.raises(DmlReproError, match="dmlrepro evaluate --run glyphs/efficientnet_lite0/triplet/seed2"):
        write_table(params, table)


def test_metrics_of_another_configuration_are_refused(params):
    params["train"]["lr"] = 3e-4  # same run folders, other configuration
    table = load_study(params).table("demo/t1")
    with pytest.raises(DmlReproError, match="another configuration.*dmlrepro train --run glyphs/efficientnet_lite0/triplet/seed0"):
        build_table(params, table)


def test_missing_metric_or_block_names_it(params):
    study = load_study(params)
    run = study.table("demo/t1").rows[0].runs["glyphs"][0]
    with pytest.raises(DmlReproError, match="no map@r under 'test'"):
        metric_value(params, run, "honest", "test", "map@r")
    with pytest.raises(DmlReproError, match="no 'test_paper' metrics"):
        metric_value(params, run, "paper", "test", "recall@1")
    with pytest.raises(DmlReproError, match="no 'val' metrics"):
        metric_value(params, run, "paper", "val", "recall@1")


def test_declaration_errors(params, tmp_path):
    study = load_study(params)
    with pytest.raises(DmlReproError, match="no table 'demo/nope' is declared; declared tables: demo/t1"):
        study.table("demo/nope")
    write_paper(params, "tables:\n  t:\n    columns: [{key: a, dataset: glyphs, metric: recall@1}]\n"
                "    rows: [{label: X, method: unknown_method}]\n", paper="bad")
    with pytest.raises(DmlReproError, match="unknown_method"):
        load_study(params)


PROTOCOLS = """
tables:
  t2:
    protocols: [honest, paper]
    seeds: [0, 1, 2]
    columns:
      - {key: r1, dataset: glyphs, metric: recall@1, header: R@1}
      - {key: mapr, dataset: glyphs, metric: map@r}
      - {key: v1, dataset: glyphs, metric: recall@1, split: val, header: R@1, as: CUB}
    rows:
      - {label: Triplet, method: triplet, published: {r1: 54.4, mapr: null}}
  single:
    seeds: [5]
    columns: [{key: r1, dataset: glyphs, metric: recall@1}]
    rows: [{label: Triplet, method: triplet, overrides: {train.lr: 0.001}}]
"""


def test_one_block_per_protocol_and_paper_reads_test_paper(tmp_path):
    params = study_params(tmp_path)
    write_paper(params, PROTOCOLS)
    study = load_study(params)
    table = study.table("demo/t2")
    runs = table.rows[0].runs["glyphs"]
    assert [r.seed for r in runs] == [0, 1, 2]
    for run, (t, p, m, v) in zip(runs, [(0.5, 0.8, 0.2, 0.4), (0.6, 0.9, 0.3, 0.5), (0.7, 1.0, 0.4, 0.6)]):
        write_metrics(params, run, test={"recall@1": t, "map@r": m}, test_paper={"recall@1": p, "map@r": m + 0.1},
                      val={"recall@1": v})
    md, csv_text, _ = build_table(params, table)
    half = 100 * T_975[2] * 0.1 / math.sqrt(3)  # every column: three values 0.1 apart -> sd 0.1
    assert f"{half:.1f}" == "24.8"
    honest, paper = md.split("## Protocol: honest")[1].split("## Protocol: paper")
    assert "| Method | glyphs R@1 | glyphs map@r | glyphs (CUB stand-in) R@1 [val] |" in honest
    assert "| Triplet | 60.0 ± 24.8 (n=3; paper 54.4) | 30.0 ± 24.8 (n=3) | 50.0 ± 24.8 (n=3) |" in honest
    assert "| Triplet | 90.0 ± 24.8 (n=3; paper 54.4) | 40.0 ± 24.8 (n=3) | 50.0 ± 24.8 (n=3) |" in paper
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["protocol"] for r in rows] == ["honest", "paper"]
    assert [float(r["r1_mean"]) for r in rows] == [60.0, 90.0]
    assert [float(r["v1_mean"]) for r in rows] == [50.0, 50.0]
    assert all(float(r["mapr_ci95"]) == pytest.approx(half, abs=0.01) for r in rows)
    assert all(r["mapr_published"] == "" and r["r1_n"] == "3" for r in rows)

    single = study.table("demo/single")
    (run,) = single.rows[0].runs["glyphs"]
    assert run.seed == 5 and run.name.startswith("triplet-")
    write_metrics(params, run, test={"recall@1": 0.625})
    md, csv_text, _ = build_table(params, single)
    assert "| Triplet | 62.5 (n=1, single run) |" in md and "## Protocol: paper" not in md
    (row,) = csv.DictReader(io.StringIO(csv_text))
    assert row["r1_ci95"] == "" and row["r1_n"] == "1" and row["run"] == run.name


PARTIAL = """
tables:
  t2:
    caption: Built column by column.
    columns:
      - {key: a, dataset: glyphs, metric: recall@1, header: R@1}
      - {key: b, dataset: glyphs_sop, as: SOP, metric: recall@1, header: R@1}
    rows:
      - {label: Base, method: triplet, published: {a: 50.0, b: 60.0}}
      - {label: Method, method: contrastive, published: {a: 52.0, b: 63.0}}
    claims: [{base: Base, method: Method}]
"""


def test_a_partial_table_marks_the_cells_and_claims_still_to_build(tmp_path):
    params = study_params(tmp_path, datasets=("glyphs", "glyphs_sop"), seeds=(0, 1))
    write_paper(params, PARTIAL)
    table = load_study(params).table("demo/t2")
    rows = {r.label: r for r in table.rows}
    for label, values in {"Base": (0.5, 0.6), "Method": (0.55, 0.7)}.items():
        for run, v in zip(rows[label].runs["glyphs"], values):
            write_metrics(params, run, test={"recall@1": v})
    write_metrics(params, rows["Base"].runs["glyphs_sop"][0], test={"recall@1": 0.9})  # one seed of two
    with pytest.raises(DmlReproError, match="is missing"):
        build_table(params, table)
    md, text, html = build_table(params, table, partial=True)
    base = next(line for line in md.splitlines() if line.startswith("| Base |"))
    # glyphs: (50 + 60) / 2 = 55.0, half-width 12.706 * sd(0.5, 0.6) / sqrt(2) = 0.635 -> 63.5 points (by hand)
    assert base == "| Base | 55.0 ± 63.5 (n=2; paper 50) | not built (paper 60) |"
    assert "A partial build" in md and "A partial build" in html
    records = list(csv.DictReader(io.StringIO(text)))
    assert records[0]["b_mean"] == "" and records[0]["b_n"] == "0" and records[0]["a_mean"] == "55.0"
    claims = [line for line in md.splitlines() if line.startswith("| demo/t2")]
    assert len(claims) == 2  # one per column
    assert "not built" in next(c for c in claims if "glyphs_sop" in c or "SOP" in c)
    assert "not built" not in next(c for c in claims if "SOP" not in c)


def _legend_over_two_datasets(params, rows: str) -> str:
    """The settings line of a table with the given rows over glyphs and large."""
    from dmlrepro.reporting.tables import settings_line

    write_paper(params, "tables:\n  t:\n    columns: [{key: a, dataset: glyphs, metric: recall@1},\n"
                "              {key: b, dataset: large, metric: recall@1}]\n"
                f"    rows: {rows}\n")
    return settings_line(params, load_study(params).table("demo/t"))


def test_the_legend_names_a_methods_own_schedule_on_one_dataset(tmp_path):
    params = study_params(tmp_path, datasets=("glyphs", "large"))
    params["methods"]["contrastive"]["train"] = {"epochs": 3}
    params["methods"]["contrastive"]["train_per_dataset"] = {"large": {"epochs": 7}}
    line = _legend_over_two_datasets(params, "[{label: T, method: triplet}, {label: C, method: contrastive}]")
    # by hand: T trains tiny_params' 2 on both; C its own 3 on glyphs and its own 7 on large
    assert "; 2 epochs (3 for C on glyphs; 7 for C on large) of 3 iterations," in line


def test_the_legend_names_no_dataset_schedule_that_no_run_trains(tmp_path):
    params = study_params(tmp_path, datasets=("glyphs", "large"))
    params["train_per_dataset"] = {"large": {"epochs": 5}}
    params["methods"]["triplet"]["train_per_dataset"] = {"large": {"epochs": 7}}
    line = _legend_over_two_datasets(params, "[{label: T, method: triplet}]")
    # by hand: T trains 2 on glyphs and its own 7 on large; nothing on the table trains large's 5
    assert "; 2 epochs (7 for T on large) of 3 iterations," in line
