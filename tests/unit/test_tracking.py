import json

import pytest

from dmlrepro.reporting.tracking import flatten, init_store, log_target
from dmlrepro.study import load_study
from studyutil import study_params, write_metrics, write_paper


@pytest.fixture
def params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = study_params(tmp_path, seeds=(0,))
    params["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_paper(params, "tables:\n  t1:\n"
                "    columns: [{key: r1, dataset: glyphs, metric: recall@1}]\n"
                "    rows: [{label: Triplet, method: triplet}]\n"
                "sweeps:\n  s1:\n    base: {table: t1, row: Triplet}\n    parameter: train.lr\n"
                "    values: [1.0e-4, 1.0e-3]\n    datasets: [glyphs]\n    metric: recall@1\n")
    metrics = {"recall@1": 0.5, "map@r": 0.2}
    for run in load_study(params).runs.values():
        write_metrics(params, run, test=metrics, val=metrics, test_last_epoch=metrics, config_hash="abc")
        (run.dir(params) / "history.json").write_text(json.dumps(
            {"epochs": [{"epoch": e, "loss": 1.0 / e, "val": metrics} for e in (1, 2, 3)]}))
    return params


def test_logs_once_and_replaces_runs_left_unfinished(params):
    from mlflow.tracking import MlflowClient

    init_store(params["mlflow"]["tracking_uri"])
    table = load_study(params).table("demo/t1")
    assert log_target(params, table) == 1
    assert log_target(params, table) == 0  # unchanged config: no duplicate
    client = MlflowClient(params["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("demo/t1")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training-runs view
    (run,) = client.search_runs([exp.experiment_id])
    tags = run.data.tags
    assert tags["config_hash"] == "abc" and tags["row"] == "Triplet"
    assert tags["run"] == "glyphs/efficientnet_lite0/triplet/seed0" and tags["seed"] == "0"
    assert tags["paper"] == "demo" and tags["table"] == "t1" and tags["method"] == "triplet"
    assert run.data.metrics["final_test_recall_at_1"] == 0.5 and run.data.metrics["best_epoch"] == 2
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    assert run.data.params["train.lr"] == str(params["train"]["lr"])
    assert run.data.params["method.loss_args.margin"] == "0.1" and run.data.params["seed"] == "0"
    # a killed logger leaves a RUNNING run: the next call deletes it and logs a complete one
    client.set_terminated(run.info.run_id, "RUNNING")
    assert log_target(params, table) == 1
    (fresh,) = client.search_runs([exp.experiment_id])
    assert fresh.info.status == "FINISHED" and fresh.info.run_id != run.info.run_id


def test_a_sweep_logs_one_mlflow_run_per_point_and_seed(params):
    from mlflow.tracking import MlflowClient

    sweep = load_study(params).sweep("demo/s1")
    assert log_target(params, sweep) == 2
    assert log_target(params, sweep) == 0
    client = MlflowClient(params["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("demo/s1")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["row"] for r in runs) == ["train.lr=0.0001", "train.lr=0.001"]
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.0001", "0.001"]


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}
    assert flatten({"a": {}, "b": {"c": {"d": True}}}) == {"a": "{}", "b.c.d": "True"}
