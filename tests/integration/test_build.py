"""End to end on the baselines' tiny study built once by real `snakemake --cores 2`: its tables,
benchmarks, MLflow record and server, a resumed run, and what reruns after a change."""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from dmlrepro.study.stages import job_counts
from conftest import cli_env, make_workspace, run, tiny_params

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
