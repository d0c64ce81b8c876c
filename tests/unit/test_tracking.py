import json

import pytest

from dmlrepro.config import load_params, run_dir
from dmlrepro.tracking import flatten, init_store, log_table
from conftest import REPO


@pytest.fixture
def params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = load_params(REPO / "params.yaml")
    params["paths"].update({"runs": "runs", "papers": "papers"})
    params["experiment"].update({"seeds": [0], "methods": ["triplet"]})
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "demo.yaml").write_text(
        "paper: demo\ntitle: Demo\ntables:\n  t1:\n"
        "    columns: [{key: r1, dataset: glyphs, metric: recall@1}]\n"
        "    rows: [{label: Triplet, method: triplet}]\n")
    d = run_dir(params, "glyphs", "triplet", 0)
    d.mkdir(parents=True)
    metrics = {"recall@1": 0.5, "map@r": 0.2}
    (d / "metrics.json").write_text(json.dumps({"config_hash": "abc", "best_epoch": 2, "val": metrics,
                                                "test": metrics, "test_last_epoch": metrics}))
    (d / "history.json").write_text(json.dumps({"epochs": [{"epoch": e, "loss": 1.0 / e, "val": metrics}
                                                           for e in (1, 2, 3)]}))
    return params


def test_logs_once_and_replaces_runs_left_unfinished(params):
    from mlflow.tracking import MlflowClient

    init_store(params["mlflow"]["tracking_uri"])
    assert log_table(params, "demo/t1") == 1
    assert log_table(params, "demo/t1") == 0  # unchanged config: no duplicate
    client = MlflowClient(params["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("demo/t1")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["config_hash"] == "abc" and run.data.tags["row"] == "Triplet"
    assert run.data.metrics["final_test_recall_at_1"] == 0.5
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    assert run.data.params["train.lr"] == str(params["train"]["lr"])
    # a killed logger leaves a RUNNING run: the next call deletes it and logs a complete one
    client.set_terminated(run.info.run_id, "RUNNING")
    assert log_table(params, "demo/t1") == 1
    (fresh,) = client.search_runs([exp.experiment_id])
    assert fresh.info.status == "FINISHED" and fresh.info.run_id != run.info.run_id


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}
