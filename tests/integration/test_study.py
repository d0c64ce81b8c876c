"""End to end on a mini study (two tables sharing rows, a paper-protocol table, a sweep) built by
real `snakemake --cores 2` and handed to DVC: the shared runs, the report, an ablation as a DVC
experiment, and `dvc repro` building the same study."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from dmlrepro.study.stages import job_counts
from conftest import make_workspace, run, tiny_params

pytestmark = pytest.mark.integration

def snakemake_outputs(ws: Path) -> set:
    summary = run(["snakemake", "--cores", "1", "--summary"], ws).stdout
    outs = {line.split("\t")[0] for line in summary.splitlines()[1:] if line.strip()}
    return {p for p in outs if not p.startswith(("results/logs", "results/benchmarks"))}


def dvc_outputs(ws: Path) -> set:
    code = ("import json; from dvc.repo import Repo; r = Repo('.');"
            "print(json.dumps(sorted(str(o.fs_path).replace(r.root_dir + '/', '') for o in r.index.outs)))")
    return set(json.loads(run(["python", "-c", code], ws).stdout))


def test_snakemake_and_dvc_declare_the_same_outputs(workspace):
    smk = snakemake_outputs(workspace)
    assert smk == dvc_outputs(workspace)
    assert len(smk) == 1 + 1 + (5 * 2 + 1) * 3 + 3


# Two tables sharing rows, a paper-protocol table and a sweep whose default point is a table row.
STUDY = """
paper: mini
title: Two tables and a sweep
presets:
  small: {train.embedding_dim: 128}
tables:
  a:
    caption: Table A of the mini study.
    columns: [{key: r1, dataset: glyphs, metric: recall@1}, {key: nmi, dataset: glyphs, metric: nmi}]
    rows: [{label: Frozen, method: frozen}, {label: Contrastive, method: contrastive}]
  b:
    caption: Table B of the mini study.
    protocols: [honest, paper]
    columns: [{key: r1, dataset: glyphs, metric: recall@1}]
    rows:
      - {label: Contrastive, method: contrastive}
      - {label: Contrastive 128-d, method: contrastive, preset: small, published: {r1: 50.0}}
sweeps:
  margin:
    caption: Contrastive negative margin.
    base: {table: a, row: Contrastive}
    parameter: method.loss_args.neg_margin
    values: [0.3, 0.5]
    datasets: [glyphs]
    metric: recall@1
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The mini study built by real `snakemake --cores 2`, handed to DVC by the Snakefile's onsuccess."""
    params = tiny_params(methods=("frozen", "contrastive"), seeds=(0,))
    params.update({"tables": ["mini/a", "mini/b"], "figures": ["mini/margin"]})
    ws = make_workspace(tmp_path_factory.mktemp("study"), params, papers={"mini": STUDY})
    assert snakemake_outputs(ws) == dvc_outputs(ws)  # before anything is built
    built = run(["snakemake", "--cores", "2"], ws)
    return ws, built


def test_study_shares_runs_between_tables_and_the_sweep(study):
    ws, built = study
    counts = job_counts(built.stdout + built.stderr)
    # 10 cells (a: 2x2, b: 2 rows x 2 protocols, sweep: 2 points) from 5 runs: frozen, contrastive
    # (in a and b), contrastive 128-d, and the sweep's two declared margins
    assert counts["train"] == 5 and counts["evaluate"] == 5 and counts["table"] == 2 and counts["figure"] == 1
    runs = sorted(p.parent.relative_to(ws / "results/runs").as_posix()
                  for p in (ws / "results/runs").rglob("metrics.json"))
    assert len(runs) == 5 and "glyphs/efficientnet_lite0/contrastive/seed0" in runs
    listed = run(["dmlrepro", "list", "runs", "--table", "mini/b"], ws).stdout
    assert listed.count("evaluated") == 2 and "--test-every-epoch" in listed


def test_tables_show_both_protocols_and_only_the_needed_metrics(study):
    ws, _ = study
    md = (ws / "results/tables/mini/b.md").read_text()
    assert "## Protocol: honest" in md and "## Protocol: paper" in md and "paper 50" in md and "single run" in md
    rows = list(csv.DictReader((ws / "results/tables/mini/b.csv").open()))
    assert [r["protocol"] for r in rows] == ["honest", "honest", "paper", "paper"]
    base = ws / "results/runs/glyphs/efficientnet_lite0"
    shared = json.loads((base / "contrastive/seed0/metrics.json").read_text())
    history = json.loads((base / "contrastive/seed0/history.json").read_text())
    # the papers' protocol: the best test epoch, read from the per-epoch test scores
    best = max(history["epochs"], key=lambda e: e["test"]["recall@1"])
    assert shared["test_best_epoch"] == best["epoch"]
    assert shared["test_paper"]["recall@1"] == pytest.approx(best["test"]["recall@1"])
    assert "nmi" in shared["test"]  # table a asks NMI of this run
    frozen = json.loads((base / "frozen/seed0/metrics.json").read_text())
    assert "nmi" in frozen["test"] and "test_paper" not in frozen
    small = next(p for p in base.iterdir() if p.name.startswith("contrastive-"))
    metrics = [json.loads((p / "seed0/metrics.json").read_text()) for p in base.iterdir() if p.name.startswith("contrastive-")]
    assert any("nmi" not in m["test"] for m in metrics) and small.name != "contrastive"


def test_figure_has_one_point_per_value(study):
    ws, _ = study
    rows = list(csv.DictReader((ws / "results/figures/mini/margin.csv").open()))
    assert [float(r["value"]) for r in rows] == [0.3, 0.5]
    # the declared default margin is its own folder, with the table's configuration: the same result
    assert rows[1]["run"].startswith("contrastive-")
    table_a = list(csv.DictReader((ws / "results/tables/mini/a.csv").open()))
    assert float(rows[1]["mean"]) == float(next(r for r in table_a if r["row"] == "Contrastive")["r1_mean"])
    png = (ws / "results/figures/mini/margin.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_report_holds_every_table_and_figure(study, tmp_path):
    ws, _ = study
    report = tmp_path / "report.html"
    run(["snakemake", "--report", str(report)], ws)
    html = report.read_text(errors="replace")
    for name in ("a.html", "b.html", "margin.png", "Table A of the mini study", "Contrastive negative margin"):
        assert name in html, name


def test_snakemake_build_is_recorded_in_dvc_and_an_ablation_reruns_only_its_runs(study):
    ws, _ = study
    status = run(["dvc", "status"], ws)
    assert "up to date" in status.stdout, status.stdout
    run(["git", "add", "-A"], ws)
    run(["git", "commit", "-qm", "built with snakemake"], ws)
    # the swept hyper-parameter itself: the runs that take it from params.yaml rerun, the sweep's
    # points (which declare their own value) and everything else do not, and no run is renamed
    exp = run(["dvc", "exp", "run", "-S", "methods.contrastive.loss_args.neg_margin=0.4"], ws)
    ran = set(re.findall(r"Running stage '([^']+)'", exp.stdout + exp.stderr))
    trained = {s for s in ran if s.startswith("train-")}
    plain = "train-glyphs-efficientnet_lite0-contrastive-seed0"
    assert len(trained) == 2 and plain in trained, ran  # the plain row and the 128-d preset row
    assert all(s.startswith("train-glyphs-efficientnet_lite0-contrastive") for s in trained), ran
    assert {s for s in ran if s.startswith("evaluate-")} == {s.replace("train-", "evaluate-") for s in trained}
    assert {"table-mini-a", "table-mini-b"} <= ran and "figure-mini-margin" not in ran
    assert not any(s.startswith(("prepare-", "extract-")) or "frozen" in s for s in ran), ran
    shown = json.dumps(json.loads(run(["dvc", "exp", "show", "--json"], ws).stdout))
    assert "neg_margin" in shown and "recall@1" in shown


def test_dvc_repro_builds_the_same_study_as_snakemake(study, tmp_path):
    ws, _ = study
    params = yaml.safe_load((ws / "params.yaml").read_text())
    fresh = make_workspace(tmp_path, params, papers={"mini": STUDY})
    out = run(["dvc", "repro"], fresh)
    ran = re.findall(r"Running stage '([^']+)'", out.stdout + out.stderr)
    assert sum(s.startswith("train-") for s in ran) == 5
    for name in ("tables/mini/a.csv", "tables/mini/b.csv", "figures/mini/margin.csv"):
        assert (fresh / "results" / name).read_text() == (ws / "results" / name).read_text(), name
    assert "up to date" in run(["dvc", "status"], fresh).stdout
