"""The MLflow record in process, on a sqlite store in tmp_path: the table entries' update rule, and
the training run's life (epochs as they end, statuses, resume, artifacts, dataset input)."""
import dataclasses
import hashlib
import json
import shutil

import pytest
import torch

from dmlrepro.reporting.experiments import KIND, KIND_TAG, ui_url
from dmlrepro.reporting.store import init_store
from dmlrepro.reporting.table_record import log_target
from dmlrepro.reporting.training_record import TrainingTracker, log_evaluation, mlflow_params
from dmlrepro.study import load_study
from dmlrepro.study.runs import resolve_run
from dmlrepro.training import frozen
from dmlrepro.training.loop import Diverged
from dmlrepro.study.runs import RunPaths
from conftest import nan_criterion
from studyutil import study_params, write_metrics, write_paper
from test_training import _features

PAPER = ("tables:\n  t1:\n"
         "    columns: [{key: r1, dataset: glyphs, metric: recall@1}]\n"
         "    rows: [{label: Triplet, method: triplet}]\n"
         "sweeps:\n  s1:\n    base: {table: t1, row: Triplet}\n    parameter: train.lr\n"
         "    values: [1.0e-4, 1.0e-3]\n    datasets: [glyphs]\n    metric: recall@1\n")


def _client(params):
    from mlflow.tracking import MlflowClient

    return MlflowClient(params["mlflow"]["tracking_uri"])


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A sqlite store with MLflow's schema (created once: its migrations take seconds)."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    init_store(f"sqlite:///{db}")
    return db


def _store(tmp_path, empty_store) -> str:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def params(tmp_path, monkeypatch, empty_store):
    monkeypatch.chdir(tmp_path)
    params = study_params(tmp_path, seeds=(0,))
    params["mlflow"]["tracking_uri"] = _store(tmp_path, empty_store)
    write_paper(params, PAPER)
    metrics = {"recall@1": 0.5, "map@r": 0.2}
    for run in load_study(params).runs.values():
        write_metrics(params, run, test=metrics, val=metrics, test_last_epoch=metrics, config_hash="abc")
        (run.dir(params) / "history.json").write_text(json.dumps(
            {"epochs": [{"epoch": e, "loss": 1.0 / e, "val": metrics} for e in (1, 2, 3)]}))
    return params


def test_table_entries_follow_the_update_rule(params):
    from mlflow.entities import ViewType

    table = load_study(params).table("demo/t1")
    assert log_target(params, table) == 1
    assert log_target(params, table) == 0  # unchanged: nothing written
    client = _client(params)
    exp = client.get_experiment_by_name("demo/t1")
    assert exp.tags[KIND_TAG] == KIND
    assert exp.artifact_location.endswith("/mlartifacts/demo/t1")  # beside the db, not ./mlruns
    (entry,) = client.search_runs([exp.experiment_id])
    (run,) = table.runs()
    metrics_file = run.dir(params) / "metrics.json"
    tags = entry.data.tags
    assert tags["config_hash"] == "abc" and tags["row"] == "Triplet" and tags["dataset"] == "glyphs"
    assert tags["run"] == "glyphs/efficientnet_lite0/triplet/seed0" and tags["seed"] == "0"
    assert tags["paper"] == "demo" and tags["table"] == "t1" and tags["method"] == "triplet"
    assert tags["metrics_sha256"] == _sha(metrics_file) and tags["training_run_id"] == ""
    assert tags["git_dirty"] in ("true", "false", "unknown") and "git_commit" in tags
    assert entry.data.metrics["final_test_recall_at_1"] == 0.5 and entry.data.metrics["best_epoch"] == 2
    assert [m.step for m in client.get_metric_history(entry.info.run_id, "train_loss")] == [1, 2, 3]
    assert entry.data.params["train.lr"] == str(params["train"]["lr"])
    assert entry.data.params["method.loss_args.margin"] == "0.1" and entry.data.params["seed"] == "0"

    # a changed metrics.json replaces the entry: one active entry, the old one deleted
    data = json.loads(metrics_file.read_text())
    data["test"]["recall@1"] = 0.75
    metrics_file.write_text(json.dumps(data))
    assert log_target(params, table) == 1
    (changed,) = client.search_runs([exp.experiment_id])
    assert changed.info.run_id != entry.info.run_id and changed.data.metrics["final_test_recall_at_1"] == 0.75
    assert changed.data.tags["metrics_sha256"] == _sha(metrics_file)
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id], run_view_type=ViewType.DELETED_ONLY)] \
        == [entry.info.run_id]
    assert log_target(params, table) == 0

    # a killed logger leaves a RUNNING entry: the next call replaces it with a complete one
    client.set_terminated(changed.info.run_id, "RUNNING")
    assert log_target(params, table) == 1
    (fresh,) = client.search_runs([exp.experiment_id])
    assert fresh.info.status == "FINISHED" and fresh.info.run_id != changed.info.run_id

    # retrained (a new training run in history.json): replaced, and linked to the training run
    training = TrainingTracker(params, run)
    training_id = training.start()
    history_file = run.dir(params) / "history.json"
    history_file.write_text(json.dumps({**json.loads(history_file.read_text()), "mlflow_run_id": training_id}))
    assert log_target(params, table) == 1
    (linked,) = client.search_runs([exp.experiment_id])
    assert linked.data.tags["training_run_id"] == training_id
    assert linked.data.tags["training_experiment_id"] == training.experiment_id
    assert ui_url(training.experiment_id, training_id) in linked.data.tags["mlflow.note.content"]
    assert log_target(params, table) == 0

    # a row the declaration no longer has is deleted; the renamed row is a new entry
    write_paper(params, PAPER.replace("Triplet", "Triplet loss"))
    assert log_target(params, load_study(params).table("demo/t1")) == 1
    assert [r.data.tags["row"] for r in client.search_runs([exp.experiment_id])] == ["Triplet loss"]


def test_a_sweep_logs_one_entry_per_point_and_seed(params):
    sweep = load_study(params).sweep("demo/s1")
    assert log_target(params, sweep) == 2
    assert log_target(params, sweep) == 0
    client = _client(params)
    exp = client.get_experiment_by_name("demo/s1")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["row"] for r in runs) == ["train.lr=0.0001", "train.lr=0.001"]
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.0001", "0.001"]


def test_mlflow_params_of_a_nested_config():
    assert mlflow_params({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}
    assert mlflow_params({"a": {}, "b": {"c": {"d": True}}}) == {"a": "{}", "b.c.d": "True"}


# ---------------------------------------------------------------------------------------------
# Training runs: the real trainer on synthetic features, with a tracker


@pytest.fixture
def training(tmp_path, monkeypatch, torch_one_thread, empty_store):
    monkeypatch.chdir(tmp_path)
    params = study_params(tmp_path, seeds=(0,))
    params["mlflow"]["tracking_uri"] = _store(tmp_path, empty_store)
    params["train"].update({"epochs": 3, "iterations_per_epoch": 4, "batch_size": 8, "m_per_class": 2,
                            "embedding_dim": 8, "lr_milestones": [2], "lr": 1e-2})
    run = resolve_run(params, "glyphs", "contrastive", 0, [])
    _features(run.features.path(params))
    manifest = tmp_path / "data/glyphs/manifest.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("path,label,class_name,split\na.png,0,a,train\n")
    return params, run, manifest


def _train(params, run, **kwargs):
    with TrainingTracker(params, run, **kwargs) as tracker:
        frozen.train_frozen(run, RunPaths.of(params, run, run.dir(params)), "cpu", tracker=tracker, **kwargs)
    return tracker.run_id


def _steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_a_training_run_records_epochs_artifacts_and_its_dataset(training):
    params, run, manifest = training
    run_id = _train(params, run)
    client = _client(params)
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED" and record.info.run_name == run.id
    assert record.info.start_time <= record.info.end_time
    exp = client.get_experiment(record.info.experiment_id)
    assert exp.name == "training-runs/glyphs" and exp.tags[KIND_TAG] == KIND
    tags = record.data.tags
    assert tags["run"] == run.id and tags["config_hash"] == run.hash and tags["method"] == "contrastive"
    assert tags["dataset"] == "glyphs" and tags["seed"] == "0" and tags["attempts"] == "1"
    assert tags["features"] == str(run.features.path(params))
    assert tags["git_dirty"] in ("true", "false", "unknown") and tags["git_commit"]
    assert record.data.params["train.lr"] == "0.01"
    for key in ("train_loss", "embedding_norm", "lr", "val_recall_at_1", "val_map_at_r"):
        assert _steps(client, run_id, key) == [1, 2, 3], key
    assert not any(k.startswith("test_") for k in record.data.metrics)
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["history.json", "model.pt"]
    assert exp.artifact_location.endswith("/mlartifacts/training-runs/glyphs")
    (dataset_input,) = record.inputs.dataset_inputs
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert dataset_input.dataset.name == "glyphs" and dataset_input.dataset.digest == digest[:16]
    assert json.loads(dataset_input.dataset.source)["uri"] == str(manifest.resolve())
    history = json.loads((run.dir(params) / "history.json").read_text())
    assert history["mlflow_run_id"] == run_id
    assert frozen.load_model(run.dir(params) / "model.pt")["mlflow_run_id"] == run_id

    # evaluate's part: metrics.json as artifact, final metrics and its sha256
    write_metrics(params, run, test={"recall@1": 0.6}, val={"recall@1": 0.7}, best_epoch=3)
    assert log_evaluation(params, run, run.dir(params)) == run_id
    record = client.get_run(run_id)
    assert record.data.metrics["final_test_recall_at_1"] == 0.6 and record.data.metrics["best_epoch"] == 3
    assert record.data.tags["metrics_sha256"] == _sha(run.dir(params) / "metrics.json")
    assert "metrics.json" in [a.path for a in client.list_artifacts(run_id)]


def test_a_killed_job_is_killed_and_its_resume_continues_the_same_run(training, monkeypatch):
    params, run, _ = training
    monkeypatch.setenv("DMLREPRO_STOP_AFTER_EPOCH", "1")
    with pytest.raises(SystemExit):
        _train(params, run)
    client = _client(params)
    (killed,) = client.search_runs([client.get_experiment_by_name("training-runs/glyphs").experiment_id])
    assert killed.info.status == "KILLED" and "DMLREPRO_STOP_AFTER_EPOCH" in killed.data.tags["failure"]
    assert _steps(client, killed.info.run_id, "val_recall_at_1") == [1]
    monkeypatch.delenv("DMLREPRO_STOP_AFTER_EPOCH")
    params["train"]["threads"] = 2  # a machine-only setting: same run, and its params stay as logged
    assert _train(params, run) == killed.info.run_id
    resumed = client.get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["attempts"] == "2"
    # the killed attempt's failure is history now: kept as its attempt's tag, not as the run's failure
    assert "failure" not in resumed.data.tags and resumed.data.tags["attempt_2"] == "FINISHED"
    assert resumed.data.tags["attempt_1"].startswith("KILLED: SystemExit") and "DMLREPRO_STOP" in resumed.data.tags["attempt_1"]
    assert _steps(client, killed.info.run_id, "val_recall_at_1") == [1, 2, 3]
    assert resumed.data.params["train.threads"] == "1"
    assert len(resumed.inputs.dataset_inputs) == 1


def test_an_interrupt_is_killed_and_an_error_is_failed(training, monkeypatch):
    params, run, _ = training
    client = _client(params)
    real = frozen.evaluate_retrieval

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(frozen, "evaluate_retrieval", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(params, run)
    monkeypatch.setattr(frozen, "evaluate_retrieval", real)

    other = resolve_run(params, "glyphs", "triplet", 0, [])
    monkeypatch.setattr(frozen, "build_criterion", lambda *a, **k: nan_criterion())
    with pytest.raises(Diverged):
        _train(params, other)
    missing = resolve_run(params, "glyphs", "triplet", 1, [])
    missing = dataclasses.replace(missing, features=dataclasses.replace(missing.features, name="absent"))
    with pytest.raises(Exception):  # its features were never built
        _train(params, missing)
    exp = client.get_experiment_by_name("training-runs/glyphs")
    statuses = {r.data.tags["run"]: (r.info.status, r.data.tags.get("failure", ""))
                for r in client.search_runs([exp.experiment_id])}
    assert statuses[run.id][0] == "KILLED" and "KeyboardInterrupt" in statuses[run.id][1]
    assert statuses[other.id][0] == "FAILED" and "diverged at epoch 1" in statuses[other.id][1]
    assert statuses[missing.id][0] == "FAILED"  # failed before training started: still recorded


def test_training_without_a_tracker_touches_no_store(training, tmp_path):
    params, run, _ = training
    (tmp_path / "mlflow.db").unlink()
    frozen.train_frozen(run, RunPaths.of(params, run, run.dir(params)), "cpu")
    assert "mlflow_run_id" not in json.loads((run.dir(params) / "history.json").read_text())
    assert not (tmp_path / "mlflow.db").exists()
