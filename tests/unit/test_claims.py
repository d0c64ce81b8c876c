"""Claims: the published pair, our per-seed paired difference, its interval and verdict. Expected
values are computed by hand from the metrics files the tests write."""
import csv
import io
import math

import pytest

from dmlrepro.errors import DmlReproError
from dmlrepro.reporting.claims import paired, verdict, write_claims_page
from dmlrepro.reporting.tables import build_table
from dmlrepro.study import load_study
from dmlrepro.study import stages
from dmlrepro.study.dvc_yaml import build_dvc_yaml
from studyutil import study_params, write_metrics, write_paper

T_975_DF2 = 4.303  # Student t 0.975 quantile, 2 degrees of freedom (printed table)

DECL = """
tables:
  main:
    caption: Two losses without and with a method.
    columns:
      - {key: cub, dataset: glyphs, as: CUB-200-2011, metric: recall@1, header: R@1}
    rows:
      - {label: Base, method: triplet, published: {cub: 54.4}}
      - {label: Base + M, method: contrastive, published: {cub: 58.9}}
      - {label: Other, method: npair, published: {cub: 60.0}}
      - {label: Other + M, method: multi_similarity, published: {cub: 57.0}}
    claims:
      - {base: Base, method: Base + M}
      - {base: Other, method: Other + M}
  small:
    caption: The same on its own, published pair taken from main.
    columns:
      - {key: r1, dataset: glyphs, metric: recall@1, header: R@1}
    rows:
      - {label: B, method: triplet, overrides: {train.lr: 0.002}}
      - {label: B + M, method: contrastive, overrides: {train.lr: 0.002}}
    claims:
      - {base: B, method: B + M, columns: [r1],
         published_from: {table: main, base: Base, method: Base + M, columns: {r1: cub}}}
"""


def _study(tmp_path, decl=DECL, seeds=(0, 1, 2)):
    params = study_params(tmp_path, seeds=seeds)
    write_paper(params, decl)
    return params, load_study(params)


def _write(params, row, values: dict):
    """metrics.json of each seed's run of `row`: {seed: R@1}."""
    for run in row.runs["glyphs"]:
        write_metrics(params, run, test={"recall@1": values[run.seed]})


def _rows(table):
    return {r.label: r for r in table.rows}


def _write_main(params, study, method_gain: dict) -> dict:
    """The main table's metrics: Base at 50/60/70, Base + M at Base + method_gain[seed] points;
    Other + M one point below Other on every seed. Returns the rows by label."""
    rows = _rows(study.table("demo/main"))
    base = {0: 0.50, 1: 0.60, 2: 0.70}
    _write(params, rows["Base"], base)
    _write(params, rows["Base + M"], {s: v + method_gain[s] / 100 for s, v in base.items()})
    _write(params, rows["Other"], {0: 0.40, 1: 0.45, 2: 0.50})
    _write(params, rows["Other + M"], {0: 0.39, 1: 0.44, 2: 0.49})
    return rows


# -- the verdict -------------------------------------------------------------------------------

@pytest.mark.parametrize("published, low, high, expected", [
    (4.5, 0.2, 1.0, "same direction"),
    (4.5, -1.0, -0.2, "opposite"),
    (4.5, -0.1, 0.3, "unresolved"),
    (-3.0, -1.0, -0.2, "same direction"),  # a published decrease, reproduced
    (-3.0, 0.2, 1.0, "opposite"),
    (-3.0, -0.5, 0.5, "unresolved"),
    (4.5, float("nan"), float("nan"), "unresolved"),  # one seed: no interval
    (0.0, 0.2, 1.0, "no published change"),
])
def test_verdict_by_where_the_interval_lies(published, low, high, expected):
    assert verdict(published, low, high) == expected


# -- paired differences on hand-built metrics files --------------------------------------------

def test_claims_take_the_published_pair_from_the_rows_and_from_another_table(tmp_path):
    _, study = _study(tmp_path)
    main, small = study.table("demo/main").claims, study.table("demo/small").claims
    assert [(c.base.label, c.method.label, c.published_base, c.published_method) for c in main] == \
        [("Base", "Base + M", 54.4, 58.9), ("Other", "Other + M", 60.0, 57.0)]
    assert main[1].published_difference == pytest.approx(-3.0)
    (c,) = small
    assert (c.published_base, c.published_method, c.source) == (54.4, 58.9, "demo/main")
    assert c.stand_in == "CUB-200-2011"  # glyphs stands in for the column it borrows from


def test_one_verdict_each_from_metrics_files(tmp_path):
    params, study = _study(tmp_path)
    # Base + M beats Base by 2, 3, 4 points on seeds 0, 1, 2: mean 3, sd 1, half 4.303 / sqrt(3) = 2.48;
    # Other + M (published decrease of 3) loses 1 point on every seed: same direction as published
    rows = _write_main(params, study, {0: 2.0, 1: 3.0, 2: 4.0})
    up, down = (paired(params, c, "honest") for c in study.table("demo/main").claims)
    assert up.differences == pytest.approx({0: 2.0, 1: 3.0, 2: 4.0})
    mean, half = up.mean_ci
    assert mean == pytest.approx(3.0) and half == pytest.approx(T_975_DF2 / math.sqrt(3), rel=1e-3)
    assert up.verdict == "same direction" and up.ratio == pytest.approx(3.0 / 4.5)
    assert down.differences == pytest.approx({0: -1.0, 1: -1.0, 2: -1.0})
    assert down.verdict == "same direction" and down.ratio == pytest.approx(1 / 3)
    # the opposite: Base + M below Base on every seed
    _write(params, rows["Base + M"], {0: 0.49, 1: 0.585, 2: 0.69})
    assert paired(params, study.table("demo/main").claims[0], "honest").verdict == "opposite"
    # unresolved: one seed up, two down
    _write(params, rows["Base + M"], {0: 0.53, 1: 0.59, 2: 0.69})
    result = paired(params, study.table("demo/main").claims[0], "honest")
    assert result.verdict == "unresolved" and result.interval[0] < 0 < result.interval[1]
    assert "CUB-200-2011 stand-in" in result.verdict_text()


def test_pairing_is_by_seed_not_by_order(tmp_path):
    """Seeds vary far more than the method's effect: paired by seed the difference is exactly +1
    point on each (a tight interval); paired any other way it would be noise around 0."""
    params, study = _study(tmp_path)
    rows = _rows(study.table("demo/main"))
    base = {0: 0.30, 1: 0.80, 2: 0.55}
    _write(params, rows["Base"], base)
    _write(params, rows["Base + M"], {s: v + 0.01 for s, v in base.items()})
    # the method's runs listed in another order than the base's: pairing must still go by seed
    rows["Base + M"].runs["glyphs"].reverse()
    result = paired(params, study.table("demo/main").claims[0], "honest")
    assert result.differences == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})
    assert result.mean_ci == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-9))
    assert result.verdict == "same direction"


def test_a_training_free_base_pairs_with_every_seed(tmp_path):
    decl = """
tables:
  t:
    columns: [{key: r1, dataset: glyphs, metric: recall@1}]
    rows:
      - {label: Frozen, method: frozen, published: {r1: 50.0}}
      - {label: Trained, method: triplet, published: {r1: 60.0}}
    claims: [{base: Frozen, method: Trained}]
"""
    params, study = _study(tmp_path, decl)
    rows = _rows(study.table("demo/t"))
    assert len(rows["Frozen"].runs["glyphs"]) == 1
    _write(params, rows["Frozen"], {0: 0.40})
    _write(params, rows["Trained"], {0: 0.50, 1: 0.52, 2: 0.54})
    result = paired(params, study.table("demo/t").claims[0], "honest")
    assert result.differences == pytest.approx({0: 10.0, 1: 12.0, 2: 14.0}) and result.n == 3


def test_a_claim_whose_runs_are_not_evaluated_is_not_built_and_says_how(tmp_path):
    params, study = _study(tmp_path)
    rows = _rows(study.table("demo/main"))
    for label in ("Base", "Base + M", "Other", "Other + M"):
        _write(params, rows[label], {0: 0.5, 1: 0.6, 2: 0.7})
    paths, results = write_claims_page(study, "demo")
    by_table = {(r.claim.table, r.claim.method.label): r for r in results}
    assert by_table[("small", "B + M")].verdict == "not built"
    assert "snakemake --cores all results/tables/demo/small.md" in by_table[("small", "B + M")].reason
    assert by_table[("main", "Base + M")].verdict == "unresolved"  # zero difference on every seed
    md, csv_text, html = (p.read_text() for p in paths)
    assert [p.name for p in paths] == ["demo.md", "demo.csv", "demo.html"] and paths[0].parent.name == "claims"
    assert "3 claims: 2 unresolved, 1 not built." in md and "<table>" in html
    records = list(csv.DictReader(io.StringIO(csv_text)))
    assert [(r["table"], r["verdict"]) for r in records] == [("main", "unresolved"), ("main", "unresolved"),
                                                              ("small", "not built")]
    assert records[0]["per_seed"] == "0:0.0000 1:0.0000 2:0.0000" and records[0]["published_diff"] == "4.5"


def test_the_table_shows_its_claims(tmp_path):
    params, study = _study(tmp_path)
    _write_main(params, study, {0: 1.0, 1: 2.0, 2: 3.0})
    md, _, html = build_table(params, study.table("demo/main"))
    assert "## Claims" in md and "<h3>Claims</h3>" in html
    line = next(x for x in md.splitlines() if x.startswith("| demo/main | Base + M vs Base"))
    assert "54.4 -> 58.9 | +4.50 | +2.00 [-0.48, +4.48] | 3 | 0.44 | unresolved (on the CUB-200-2011 stand-in)" in line


# -- declarations that name what does not exist --------------------------------------------------

@pytest.mark.parametrize("claim, message", [
    ("{base: Nope, method: Base + M}", "base row 'Nope' is not a row of the table"),
    ("{base: Base, method: Base + M, columns: [zz]}", "unknown columns ['zz']"),
    ("{base: Base, method: Base + M, published_from: {table: gone, base: Base, method: Base + M, columns: {cub: cub}}}",
     "published_from table 'gone' is not declared"),
    ("{base: Base, method: Base + M, published_from: {table: main, base: Base, method: Base + M, columns: {cub: zz}}}",
     "column 'zz' is not a column of that table"),
    ("{base: Base, method: Other}", "no published pair"),
])
def test_validate_refuses_a_claim_naming_what_is_not_declared(tmp_path, claim, message):
    decl = """
tables:
  main:
    columns: [{key: cub, dataset: glyphs, metric: recall@1}]
    rows:
      - {label: Base, method: triplet, published: {cub: 54.4}}
      - {label: Base + M, method: contrastive, published: {cub: 58.9}}
      - {label: Other, method: npair}
    claims: [CLAIM]
""".replace("CLAIM", claim)
    with pytest.raises(DmlReproError, match="claims") as err:
        _study(tmp_path, decl)
    assert message in str(err.value)


def test_the_pipeline_builds_the_claims_page_of_a_selected_table_with_claims(tmp_path):
    params = study_params(tmp_path, seeds=(0, 1, 2))
    write_paper(params, DECL)
    params["tables"] = ["demo/small"]
    study = load_study(params)
    page = stages.claims_outputs(params, "demo")
    assert set(page) <= set(stages.selected_outputs(study))
    stage = build_dvc_yaml(study)["stages"]["claims-demo"]
    assert stage["cmd"] == "dmlrepro claims --paper demo"
    assert set(stages.target_inputs(params, study.table("demo/small"))) <= set(stage["deps"])
    assert "src/dmlrepro/reporting/claims.py" in stage["deps"]


def test_a_column_left_unbuilt_on_purpose_says_why_and_how(tmp_path):
    decl = DECL.replace("  small:\n", "  small:\n    unbuilt: {glyphs: needs 9 h of CPU}\n")
    params, study = _study(tmp_path, decl)
    rows = _rows(study.table("demo/main"))
    for label in ("Base", "Base + M", "Other", "Other + M"):
        _write(params, rows[label], {0: 0.5, 1: 0.6, 2: 0.7})
    _, results = write_claims_page(study, "demo")
    small = next(r for r in results if r.claim.table == "small")
    assert small.verdict_text() == ("not built: needs 9 h of CPU. To build it, "
                                    "run `snakemake --cores all results/tables/demo/small.md`")
    assert all(r.reason == "" for r in results if r.claim.table == "main")


def test_unbuilt_must_name_a_dataset_of_the_table(tmp_path):
    decl = DECL.replace("  small:\n", "  small:\n    unbuilt: {glyphs_sop: too slow}\n")
    with pytest.raises(DmlReproError, match=r"tables.small unbuilt: 'glyphs_sop' is not a dataset of the "
                                            r"table's columns \(glyphs\)"):
        _study(tmp_path, decl)
    # a column's real benchmark names it too, whether or not its root is set on this machine
    decl = DECL.replace("{key: cub, dataset: glyphs, as: CUB-200-2011,", "{key: cub, dataset: glyphs, as: CUB-200-2011, "
                        "real: large,").replace("  main:\n", "  main:\n    unbuilt: {large: too slow}\n")
    (tmp_path / "real").mkdir()
    params = study_params(tmp_path / "real", datasets=("glyphs", "large"))  # large: no root, the column stays
    write_paper(params, decl)
    assert load_study(params).table("demo/main").decl["unbuilt"] == {"large": "too slow"}
