"""End to end with the real tools: snakemake --cores 2, dvc repro / exp run, MLflow server."""
from __future__ import annotations

import csv
import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from dmlrepro.study.stages import job_counts
from conftest import REPO, cli_env, make_workspace, run, tiny_params

pytestmark = pytest.mark.integration
TABLE = Path("results/tables/baselines/glyphs")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One real `snakemake --cores 2` run of the whole pipeline on the tiny fixture."""
    ws = make_workspace(tmp_path_factory.mktemp("snakemake"), tiny_params())
    first = run(["snakemake", "--cores", "2"], ws)
    return ws, first


def test_snakemake_builds_tables_and_records_benchmarks(built):
    ws, _ = built
    md = (ws / TABLE.with_suffix(".md")).read_text()
    for label in ("Frozen backbone (no training)", "Contrastive", "Triplet", "N-pair", "Multi-Similarity", "Proxy-Anchor"):
        assert label in md
    rows = (ws / TABLE.with_suffix(".csv")).read_text().splitlines()
    assert len(rows) == 1 + 6 and rows[0].startswith("protocol,row,method,run,r1_mean,r1_ci95,r1_n")
    metrics = json.loads((ws / "results/runs/glyphs/efficientnet_lite0/triplet/seed1/metrics.json").read_text())
    assert set(metrics["test"]) == {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi"}
    assert 1 <= metrics["best_epoch"] <= 2
    for rule in ("prepare", "extract", "train", "evaluate", "table"):
        assert list((ws / "results/benchmarks" / rule).rglob("*.tsv")), rule
        assert list((ws / "results/logs" / rule).rglob("*.log")), rule


def test_snakemake_second_run_has_nothing_to_do(built):
    ws, _ = built
    dry = run(["snakemake", "--cores", "2", "-n"], ws)
    assert "Nothing to be done" in dry.stdout + dry.stderr



def test_snakemake_reruns_training_onward_when_a_hyperparameter_changes(built, tmp_path):
    ws, _ = built
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"]["lr"] = 2e-4
    other = tmp_path / "params.yaml"
    other.write_text(yaml.safe_dump(params))
    dry = run(["snakemake", "--cores", "2", "-n", "--configfile", str(other)], ws)
    counts = job_counts(dry.stdout + dry.stderr)
    # 4 trained methods x 2 seeds: Multi-Similarity has its own lr (methods.multi_similarity.train.lr)
    # and the frozen backbone no training settings, so neither is rerun
    assert params["methods"]["multi_similarity"]["train"]["lr"] != 2e-4
    assert counts.get("train") == 8 and counts.get("evaluate") == 8 and counts.get("table") == 1
    assert "prepare" not in counts and "extract" not in counts


def test_mlflow_has_one_run_per_row_and_seed_and_no_duplicates(built):
    """Snakemake's parallel jobs: one training run per train job, one table entry per (row, dataset,
    seed) linked to it, and a rerun of an unchanged table adds nothing."""
    ws, _ = built
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("baselines/glyphs")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    entries = client.search_runs([exp.experiment_id])
    assert len(entries) == 5 * 2 + 1  # the frozen backbone is deterministic: one run, not one per seed
    assert len({(r.data.tags["row"], r.data.tags["dataset"], r.data.tags["seed"]) for r in entries}) == len(entries)
    training = client.search_runs([client.get_experiment_by_name("training-runs/glyphs").experiment_id])
    assert sorted(r.info.run_name for r in training) == sorted(r.data.tags["run"] for r in entries)
    by_id = {r.info.run_id: r for r in training}
    for entry in entries:
        tags = entry.data.tags
        for key in ("paper", "table", "row", "method", "dataset", "seed", "git_commit", "git_dirty", "config_hash",
                    "metrics_sha256", "training_run_id"):
            assert key in tags, key
        trained = by_id[tags["training_run_id"]]
        assert trained.info.status == "FINISHED" and trained.data.tags["run"] == tags["run"]
        assert trained.data.tags["metrics_sha256"] == tags["metrics_sha256"]  # evaluate logged metrics.json
        assert trained.info.start_time <= trained.info.end_time
        steps = [m.step for m in client.get_metric_history(trained.info.run_id, "val_recall_at_1")]
        assert steps == ([0] if tags["method"] == "frozen" else [1, 2])
    # a rerun of an unchanged configuration adds nothing
    assert "0 entries" in run(["dmlrepro", "table", "--table", "baselines/glyphs"], ws).stdout
    assert {r.info.run_id for r in client.search_runs([exp.experiment_id])} == {r.info.run_id for r in entries}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_server_serves_the_runs(built):
    ws, _ = built
    from mlflow.tracking import MlflowClient

    port = _free_port()
    server = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{ws / 'mlflow.db'}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=ws, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = MlflowClient(f"http://127.0.0.1:{port}")
        deadline = time.time() + 90
        while True:
            try:
                exp = client.get_experiment_by_name("baselines/glyphs")
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        runs = client.search_runs([exp.experiment_id], "tags.method = 'proxy_anchor'")
        assert len(runs) == 2
        assert {r.data.tags["seed"] for r in runs} == {"0", "1"}
        assert all("final_test_recall_at_1" in r.data.metrics for r in runs)
        # the training runs, with their artifacts as the UI fetches them
        training = client.get_experiment_by_name("training-runs/glyphs")
        trained = client.search_runs([training.experiment_id], "tags.method = 'proxy_anchor'")
        assert sorted(r.data.tags["seed"] for r in trained) == ["0", "1"]
        assert {r.info.run_id for r in trained} == {r.data.tags["training_run_id"] for r in runs}
        for record in trained:
            url = f"http://127.0.0.1:{port}/get-artifact?path=history.json&run_uuid={record.info.run_id}"
            with urllib.request.urlopen(url, timeout=30) as response:
                assert json.loads(response.read())["mlflow_run_id"] == record.info.run_id
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_killed_training_resumes_and_ends_with_the_same_metrics(built, tmp_path):
    ws, _ = built
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["paths"].update({"runs": str(tmp_path / "runs"), "checkpoints": str(tmp_path / "ckpt")})
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    cmd = ["dmlrepro", "--params", str(pfile), "train", "--run", "glyphs/efficientnet_lite0/multi_similarity/seed0"]
    env = cli_env()
    env["DMLREPRO_STOP_AFTER_EPOCH"] = "1"
    killed = run(cmd, ws, check=False, env=env)
    assert killed.returncode != 0
    assert not (tmp_path / "runs/glyphs/efficientnet_lite0/multi_similarity/seed0/model.pt").exists()
    resumed = run(cmd, ws)
    assert "resuming" in resumed.stderr
    ours = json.loads((tmp_path / "runs/glyphs/efficientnet_lite0/multi_similarity/seed0/history.json").read_text())
    reference = json.loads((ws / "results/runs/glyphs/efficientnet_lite0/multi_similarity/seed0/history.json").read_text())
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h["epochs"]]
    assert strip(ours) == strip(reference)


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


def test_checked_in_dvc_yaml_matches_the_declarations():
    result = run(["dmlrepro", "dvc-yaml", "--check"], REPO, check=False)
    assert result.returncode == 0, result.stderr


def test_snakemake_lint_is_clean(workspace):
    lint = run(["snakemake", "--lint"], workspace, check=False)
    assert lint.returncode == 0 and "good condition" in lint.stdout + lint.stderr, lint.stdout


def test_bad_params_fail_fast_naming_the_key(workspace):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["lrr"] = 0.1
    params["train"]["lr"] = -1
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    smk = run(["snakemake", "--cores", "1", "-n"], workspace, check=False)
    assert smk.returncode != 0 and "train.lrr" in smk.stderr + smk.stdout
    cli = run(["dmlrepro", "prepare", "--dataset", "glyphs"], workspace, check=False)
    assert cli.returncode == 2 and "train.lrr" in cli.stderr and "train.lr: -1" in cli.stderr
    assert not (workspace / "data").exists()


def test_a_code_fix_reruns_the_same_jobs_under_both_engines(built):
    """Both engines depend on the modules each command runs: a change to the statistics code
    reruns the table under Snakemake and under DVC, and nothing else."""
    ws, _ = built
    assert "up to date" in run(["dvc", "status"], ws).stdout  # the Snakefile's onsuccess recorded the build
    stats = ws / "src/dmlrepro/reporting/stats.py"
    stats.write_text(stats.read_text() + "\n# a code fix\n")
    counts = job_counts(run(["snakemake", "--cores", "2", "-n"], ws).stdout)
    assert {k: v for k, v in counts.items() if k not in ("all", "total")} == {"table": 1}
    changed = {line.rstrip(":") for line in run(["dvc", "status"], ws).stdout.splitlines()
               if line and not line.startswith(("\t", " "))}
    assert changed == {"table-baselines-glyphs"}


def test_dvc_commit_of_a_build_outside_the_selected_tables_is_a_note_not_an_error(tmp_path):
    """`snakemake <a table params.yaml does not select>` ends in onsuccess's `dmlrepro dvc-commit`
    with nothing of dvc.yaml built: that build is simply not versioned, and says so."""
    ws = make_workspace(tmp_path, tiny_params())
    result = run(["dmlrepro", "dvc-commit"], ws)
    assert "nothing dvc.yaml versions is built yet" in result.stdout
    assert not (ws / "dvc.lock").exists()
