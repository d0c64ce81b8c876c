"""Sweep figures: the CSV behind the PNG holds mean, 95% CI and n over seeds per point, and the
published curve; expected numbers are computed by hand."""
import csv
import io
import math

import pytest

from dmlrepro.paths import figure_paths
from dmlrepro.errors import DmlReproError
from dmlrepro.reporting.figures import sweep_points, write_figure
from dmlrepro.study import load_study
from studyutil import study_params, write_metrics, write_paper

SWEEP = """
sweeps:
  lr:
    caption: lr sweep
    base: {method: triplet}
    parameter: train.lr
    values: [1.0e-4, 1.0e-3]
    datasets: [glyphs, other]
    metric: recall@1
    seeds: [0, 1, 2]
    log_x: true
    published: {other: [41.5, null]}
  single:
    base: {method: triplet}
    parameter: method.miner_args.type_of_triplets
    values: [hard, easy]
    datasets: [glyphs]
    metric: map@r
    protocol: paper
    seeds: [0]
"""
# recall@1 by (dataset, lr) for seeds 0, 1, 2
VALUES = {("glyphs", 1.0e-4): (0.5, 0.6, 0.7), ("glyphs", 1.0e-3): (0.4, 0.4, 0.4),
          ("other", 1.0e-4): (0.2, 0.3, 0.4), ("other", 1.0e-3): (0.1, 0.2, 0.3)}
HALF = 100 * 4.303 * 0.1 / math.sqrt(3)  # three values 0.1 apart: sd 0.1, t(0.975, df 2) = 4.303


@pytest.fixture
def study(tmp_path):
    params = study_params(tmp_path, datasets=("glyphs", "other"))
    write_paper(params, SWEEP)
    study = load_study(params)
    for point in study.sweep("demo/lr").points:
        for run, v in zip(point.runs, VALUES[(point.dataset, point.value)]):
            write_metrics(params, run, test={"recall@1": v})
    for point, v in zip(study.sweep("demo/single").points, (0.25, 0.375)):
        (run,) = point.runs
        write_metrics(params, run, test={"map@r": 0.0}, test_paper={"map@r": v})
    return study


def test_sweep_points_mean_ci_n_published(study):
    records = sweep_points(study.params, study.sweep("demo/lr"))
    assert [(r["dataset"], r["value"]) for r in records] == [
        ("glyphs", 1.0e-4), ("glyphs", 1.0e-3), ("other", 1.0e-4), ("other", 1.0e-3)]
    assert [r["mean"] for r in records] == pytest.approx([60.0, 40.0, 30.0, 20.0])
    assert [r["ci95"] for r in records] == pytest.approx([HALF, 0.0, HALF, HALF], abs=0.01)
    assert all(r["n"] == 3 and r["parameter"] == "train.lr" for r in records)
    assert [r["published"] for r in records] == [None, None, 41.5, None]
    assert records[0]["run"].startswith("triplet-") and records[0]["run"] != records[1]["run"]  # named by the declared lr


def test_single_seed_paper_protocol(study):
    records = sweep_points(study.params, study.sweep("demo/single"))
    assert [(r["value"], r["mean"], r["ci95"], r["n"]) for r in records] == [
        ("hard", 25.0, None, 1), ("easy", 37.5, None, 1)]


def test_write_figure_writes_png_and_csv(study):
    for name, n in (("lr", 4), ("single", 2)):
        written = write_figure(study.params, study.sweep(f"demo/{name}"))
        assert written == list(figure_paths(study.params, "demo", name))
        png, csv_path = written
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
        assert len(rows) == n
    rows = list(csv.DictReader(io.StringIO(figure_paths(study.params, "demo", "lr")[1].read_text())))
    assert list(rows[0]) == ["dataset", "parameter", "value", "run", "mean", "ci95", "n", "published"]
    assert [(r["dataset"], float(r["value"]), float(r["mean"]), r["published"]) for r in rows] == [
        ("glyphs", 1.0e-4, 60.0, ""), ("glyphs", 1.0e-3, 40.0, ""),
        ("other", 1.0e-4, 30.0, "41.5"), ("other", 1.0e-3, 20.0, "")]


def test_missing_metrics_name_the_run(study):
    run = study.sweep("demo/lr").points[1].runs[2]
    (run.dir(study.params) / "metrics.json").unlink()
    with pytest.raises(DmlReproError, match=f"dmlrepro evaluate --run {run.id}"):
        write_figure(study.params, study.sweep("demo/lr"))
