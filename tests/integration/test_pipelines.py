"""End to end with the real tools: snakemake --cores 2, dvc repro / exp run, MLflow server."""
from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

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
    assert len(rows) == 1 + 6 and rows[0].startswith("row,method,r1_mean,r1_ci95,r1_n")
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


def _job_counts(dry_run_output: str) -> dict:
    """Parse the 'Job stats' table of `snakemake -n` into {rule: count}."""
    counts, in_table = {}, False
    for line in dry_run_output.splitlines():
        if line.startswith("Job stats"):
            in_table = True
        elif in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            if parts and parts[0] == "total":
                break
    return counts


def test_snakemake_reruns_training_onward_when_a_hyperparameter_changes(built, tmp_path):
    ws, _ = built
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"]["lr"] = 2e-4
    other = tmp_path / "params.yaml"
    other.write_text(yaml.safe_dump(params))
    dry = run(["snakemake", "--cores", "2", "-n", "--configfile", str(other)], ws)
    counts = _job_counts(dry.stdout + dry.stderr)
    assert counts.get("train") == 12 and counts.get("evaluate") == 12 and counts.get("table") == 1
    assert "prepare" not in counts and "extract" not in counts


def test_mlflow_has_one_run_per_row_and_seed_and_no_duplicates(built):
    ws, _ = built
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("baselines/glyphs")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 6 * 2
    tags = runs[0].data.tags
    for key in ("paper", "table", "row", "method", "dataset", "seed", "git_commit", "config_hash"):
        assert key in tags
    history = client.get_metric_history(runs[0].info.run_id, "val_recall_at_1")
    assert [m.step for m in history] in ([0], [1, 2])
    # a rerun of an unchanged configuration adds nothing
    run(["dmlrepro", "table", "--table", "baselines/glyphs"], ws)
    assert len(client.search_runs([exp.experiment_id])) == 6 * 2


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
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_killed_training_resumes_and_ends_with_the_same_metrics(built, tmp_path):
    ws, _ = built
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["paths"].update({"runs": str(tmp_path / "runs"), "checkpoints": str(tmp_path / "ckpt")})
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    cmd = ["dmlrepro", "--params", str(pfile), "train", "--dataset", "glyphs", "--method", "multi_similarity", "--seed", "0"]
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


def test_snakemake_and_dvc_declare_the_same_outputs(workspace):
    summary = run(["snakemake", "--cores", "1", "--summary"], workspace).stdout
    smk = {line.split("\t")[0] for line in summary.splitlines()[1:] if line.strip()}
    smk = {p for p in smk if not p.startswith(("results/logs", "results/benchmarks"))}
    code = ("import json; from dvc.repo import Repo; r = Repo('.');"
            "print(json.dumps(sorted(str(o.fs_path).replace(r.root_dir + '/', '') for o in r.index.outs)))")
    dvc_outs = set(json.loads(run(["python", "-c", code], workspace).stdout))
    assert smk == dvc_outs
    assert len(smk) == 1 + 1 + 6 * 2 * 3 + 2


MINI_PAPER = """
paper: mini
title: Two rows
tables:
  glyphs:
    columns: [{key: r1, dataset: glyphs, metric: recall@1}]
    rows: [{label: Frozen, method: frozen}, {label: Contrastive, method: contrastive}]
"""


def test_dvc_repro_then_experiment_reruns_only_training_onward(tmp_path):
    params = tiny_params(methods=("frozen", "contrastive"), seeds=(0,))
    params["tables"] = ["mini/glyphs"]
    ws = make_workspace(tmp_path, params, extra_files={"workflow/papers/mini.yaml": MINI_PAPER})
    run(["dvc", "repro"], ws)
    assert (ws / "results/tables/mini/glyphs.md").exists()
    status = run(["dvc", "status"], ws)
    assert "up to date" in status.stdout
    run(["git", "add", "-A"], ws)
    run(["git", "commit", "-qm", "baseline"], ws)
    exp = run(["dvc", "exp", "run", "-S", "train.lr=0.001"], ws)
    ran = exp.stdout + exp.stderr
    assert "Running stage 'train@" in ran and "Running stage 'evaluate@" in ran
    assert "Running stage 'prepare" not in ran and "Running stage 'extract" not in ran
    shown = json.loads(run(["dvc", "exp", "show", "--json"], ws).stdout)
    assert "metrics.json" in json.dumps(shown) and "recall@1" in json.dumps(shown)


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
