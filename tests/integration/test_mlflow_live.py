"""The live MLflow record with the real CLI: a run that appears while its job trains, KILLED jobs
whose resume continues their run, 4 parallel writers, and table entries that follow metrics.json."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import cli_env, make_workspace, run, tiny_params

pytestmark = pytest.mark.integration

PAPER = """paper: live
title: Live record
tables:
  t:
    columns: [{key: r1, dataset: glyphs, metric: recall@1}]
    rows: [{label: Contrastive, method: contrastive}, {label: Triplet, method: triplet}]
"""
RUNS = [f"glyphs/efficientnet_lite0/{m}/seed{s}" for m in ("contrastive", "triplet") for s in (0, 1)]
TRAINING = "training-runs/glyphs"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace with the glyphs fixture prepared and its features extracted."""
    params = tiny_params(methods=("contrastive", "triplet"), seeds=(0, 1))
    params["tables"], params["figures"] = ["live/t"], []
    ws = make_workspace(tmp_path_factory.mktemp("live"), params, papers={"live": PAPER})
    run(["dmlrepro", "prepare", "--dataset", "glyphs"], ws)
    run(["dmlrepro", "extract", "--features", "glyphs/efficientnet_lite0"], ws)
    return ws


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its schema (created once: that takes seconds)."""
    from dmlrepro.reporting.store import init_store

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    init_store(f"sqlite:///{db}")
    return db


def variant(ws: Path, folder: Path, store: Path, **train) -> tuple[Path, str]:
    """A params file whose runs, checkpoints and MLflow store (a copy of `store`) lie in `folder`;
    (file, tracking URI)."""
    shutil.copy(store, folder / "mlflow.db")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["paths"].update({"runs": str(folder / "runs"), "checkpoints": str(folder / "ckpt")})
    params["mlflow"]["tracking_uri"] = f"sqlite:///{folder / 'mlflow.db'}"
    params["train"].update(train)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path, params["mlflow"]["tracking_uri"]


def client_of(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def training_runs(uri: str) -> list:
    """Every active training run of the glyphs experiment, read under the store's lock (as every
    writer does), so a read never meets a schema being created."""
    from dmlrepro.reporting.store import store_lock

    with store_lock(uri):
        client = client_of(uri)
        exp = client.get_experiment_by_name(TRAINING)
        return [] if exp is None else list(client.search_runs([exp.experiment_id]))


def steps(uri: str, run_id: str, key: str = "val_recall_at_1") -> list[int]:
    return [m.step for m in client_of(uri).get_metric_history(run_id, key)]


def test_a_run_is_live_while_its_job_trains_and_sigterm_kills_it(workspace, tmp_path, empty_store):
    """A 3-epoch job: its MLflow run is RUNNING with validation scores while the process lives;
    SIGTERM (what Snakemake sends a cancelled job) makes it KILLED; the resume finishes the same run."""
    pfile, uri = variant(workspace, tmp_path, empty_store, epochs=3, iterations_per_epoch=250,
                         lr_milestones=[2])  # epochs of a second or more
    cmd = ["dmlrepro", "--params", str(pfile), "train", "--run", RUNS[0]]
    job = subprocess.Popen(cmd, cwd=workspace, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen, deadline = None, time.time() + 120
        while seen is None and time.time() < deadline and job.poll() is None:
            live = [r for r in training_runs(uri) if r.info.status == "RUNNING" and "val_recall_at_1" in r.data.metrics]
            alive = job.poll() is None  # read after the store: the job was alive when it was seen
            if live and alive:
                seen = live[0]
            time.sleep(0.1)
        assert seen is not None, f"no live run seen; the job {'ended' if job.poll() is not None else 'hung'}"
        assert seen.info.run_name == RUNS[0] and seen.info.end_time in (None, 0)
        assert seen.data.params["train.epochs"] == "3" and seen.data.tags["config_hash"]
        while not list((tmp_path / "ckpt").glob("*.pt")) and job.poll() is None:  # epoch 1 is saved
            time.sleep(0.05)
        assert job.poll() is None, "the job ended before it could be terminated; make its epochs slower"
        job.send_signal(signal.SIGTERM)
        out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 128 + signal.SIGTERM, err[-2000:]
    (killed,) = training_runs(uri)
    assert killed.info.run_id == seen.info.run_id and killed.info.status == "KILLED"
    assert "SystemExit" in killed.data.tags["failure"]
    resumed = run(cmd, workspace)
    assert "resuming" in resumed.stderr
    (finished,) = training_runs(uri)
    assert finished.info.run_id == seen.info.run_id and finished.info.status == "FINISHED"
    assert finished.data.tags["attempts"] == "2" and finished.info.end_time >= finished.info.start_time
    assert sorted(set(steps(uri, finished.info.run_id))) == [1, 2, 3]
    history = json.loads((tmp_path / "runs" / RUNS[0] / "history.json").read_text())
    assert history["mlflow_run_id"] == seen.info.run_id and len(history["epochs"]) == 3


def test_a_killed_job_is_killed_and_its_resume_continues_the_same_run(workspace, tmp_path, empty_store):
    pfile, uri = variant(workspace, tmp_path, empty_store, epochs=3)
    cmd = ["dmlrepro", "--params", str(pfile), "train", "--run", RUNS[1]]
    env = cli_env()
    env["DMLREPRO_STOP_AFTER_EPOCH"] = "1"
    assert run(cmd, workspace, check=False, env=env).returncode != 0
    (killed,) = training_runs(uri)
    assert killed.info.status == "KILLED" and steps(uri, killed.info.run_id) == [1]
    run(cmd, workspace)
    (finished,) = training_runs(uri)
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"
    assert steps(uri, finished.info.run_id) == [1, 2, 3] and steps(uri, finished.info.run_id, "train_loss") == [1, 2, 3]
    artifacts = {a.path for a in client_of(uri).list_artifacts(finished.info.run_id)}
    assert artifacts == {"model.pt", "history.json"}


@pytest.fixture(scope="module")
def trained(workspace):
    """The 4 runs of the table trained by 4 parallel `dmlrepro train` jobs on a store nobody created
    beforehand, then evaluated by 4 parallel `dmlrepro evaluate` jobs."""
    def parallel(command):
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda r: run(["dmlrepro", command, "--run", r], workspace), RUNS))

    parallel("train")
    parallel("evaluate")
    return workspace, f"sqlite:///{workspace / 'mlflow.db'}"


def test_four_parallel_writers_lose_and_duplicate_nothing(trained):
    ws, uri = trained
    runs = training_runs(uri)
    assert sorted(r.info.run_name for r in runs) == sorted(RUNS)  # one each: nothing lost or duplicated
    client = client_of(uri)
    for record in runs:
        history = json.loads((ws / "results/runs" / record.info.run_name / "history.json").read_text())
        assert history["mlflow_run_id"] == record.info.run_id
        assert record.info.status == "FINISHED" and steps(uri, record.info.run_id) == [1, 2]
        artifacts = {a.path for a in client.list_artifacts(record.info.run_id)}
        assert artifacts == {"model.pt", "history.json", "metrics.json"}
        assert "final_test_recall_at_1" in record.data.metrics and record.data.tags["metrics_sha256"]
        assert record.data.tags["git_dirty"] == "false" and len(record.data.tags["git_commit"]) == 40
        (dataset,) = record.inputs.dataset_inputs
        assert dataset.dataset.name == "glyphs" and len(dataset.dataset.digest) == 16
    assert (ws / "mlartifacts" / TRAINING).is_dir() and not (ws / "mlruns").exists()


def test_table_entries_link_training_runs_and_follow_metrics_json(trained):
    ws, uri = trained
    table = ["dmlrepro", "table", "--table", "live/t"]
    assert "4 entries" in run(table, ws).stdout
    assert "0 entries" in run(table, ws).stdout  # an unchanged rerun adds nothing
    client = client_of(uri)
    exp = client.get_experiment_by_name("live/t")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    entries = {r.data.tags["run"]: r for r in client.search_runs([exp.experiment_id])}
    training = {r.info.run_name: r.info.run_id for r in training_runs(uri)}
    assert sorted(entries) == sorted(RUNS)
    for run_id, entry in entries.items():
        assert entry.data.tags["training_run_id"] == training[run_id]
        assert training[run_id] in entry.data.tags["mlflow.note.content"]
    # a changed metrics.json updates its entry, and only its entry
    metrics_file = ws / "results/runs" / RUNS[2] / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["test"]["recall@1"] = 0.123
    metrics_file.write_text(json.dumps(metrics))
    assert "1 entry" in run(table, ws).stdout
    after = {r.data.tags["run"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(after) == sorted(RUNS)
    assert after[RUNS[2]].data.metrics["final_test_recall_at_1"] == 0.123
    assert after[RUNS[2]].info.run_id != entries[RUNS[2]].info.run_id
    assert all(after[r].info.run_id == entries[r].info.run_id for r in RUNS if r != RUNS[2])
