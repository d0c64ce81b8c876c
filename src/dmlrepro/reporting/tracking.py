"""MLflow record of every run: one experiment per paper table, one MLflow run per (row, dataset, seed).

MLflow is imported lazily (its import costs over a second). All writes go through one file lock,
so parallel jobs never create the sqlite schema concurrently (which corrupts it) nor contend for
its write lock. A rerun of an unchanged configuration finds its finished MLflow run by tag and
adds nothing; a run left unfinished by a killed job is deleted and logged again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
from pathlib import Path
from typing import Iterator

from ..study.declarations import Sweep, Table
from ..study.runs import Run, flatten as flatten_keys


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    db = _sqlite_file(uri)
    if db is None:  # a server store serialises writes itself
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def init_store(uri: str) -> None:
    """Create the tracking store once (schema migrations), before parallel jobs start."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        MlflowClient(uri).search_experiments(max_results=1)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config -> {dotted key: string} as MLflow params (lists as JSON)."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
            for k, v in flatten_keys(d, prefix).items()}


def _metric_name(split: str, metric: str) -> str:
    return f"{split}_{metric.replace('@', '_at_')}"  # '@' is not allowed in MLflow metric names


def _run_payload(params: dict, run: Run):
    from mlflow.entities import Metric, Param

    folder = run.dir(params)
    metrics = json.loads((folder / "metrics.json").read_text("utf-8"))
    history = json.loads((folder / "history.json").read_text("utf-8"))
    mlflow_params = [Param(k[:250], v[:6000]) for k, v in flatten(run.config).items()]
    values = []
    for entry in history["epochs"]:
        step = entry["epoch"]
        if entry.get("loss") is not None:
            values.append(Metric("train_loss", entry["loss"], 0, step))
        for split in ("val", "test"):
            values += [Metric(_metric_name(split, k), v, 0, step) for k, v in entry.get(split, {}).items()]
    for split in ("val", "test", "test_last_epoch", "test_paper"):
        values += [Metric(_metric_name(f"final_{split}", k), v, 0, 0) for k, v in metrics.get(split, {}).items()]
    values.append(Metric("best_epoch", metrics["best_epoch"], 0, 0))
    return metrics["config_hash"], mlflow_params, values


def _entries(target: Table | Sweep) -> list[tuple[str, Run]]:
    """(row label, run) for every run a table or figure shows."""
    if isinstance(target, Table):
        return [(row.label, run) for row in target.rows for runs in row.runs.values() for run in runs]
    return [(f"{target.decl['parameter']}={p.value}", run) for p in target.points for run in p.runs]


def log_target(params: dict, target: Table | Sweep) -> int:
    """Log every run of a table or figure to its experiment (named PAPER/NAME); return how many
    MLflow runs were created."""
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    uri = params["mlflow"]["tracking_uri"]
    commit = git_commit()
    created = 0
    with store_lock(uri):
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(target.ref)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            target.ref, tags={"paper": target.paper, "table": target.name})
        # MLflow 3's UI opens an experiment without a kind in its GenAI view; this is a training study
        client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        for label, run in _entries(target):
            cfg_hash, mlflow_params, values = _run_payload(params, run)
            row = label.replace("'", "")
            existing = client.search_runs([exp_id], f"tags.config_hash = '{cfg_hash}' and tags.row = '{row}' "
                                                    f"and tags.run = '{run.id}'")
            if any(r.info.status == "FINISHED" for r in existing):
                continue
            for stale in existing:  # left unfinished by a killed job
                client.delete_run(stale.info.run_id)
            tags = {"paper": target.paper, "table": target.name, "row": row, "method": run.method,
                    "dataset": run.dataset, "seed": str(run.seed), "git_commit": commit,
                    "config_hash": cfg_hash, "run": run.id,
                    "mlflow.runName": f"{run.name}/{run.dataset}/seed{run.seed}"}
            run_id = client.create_run(exp_id, tags=tags).info.run_id
            client.log_batch(run_id, params=mlflow_params)
            for i in range(0, len(values), 1000):
                client.log_batch(run_id, metrics=values[i : i + 1000])
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
            created += 1
    return created
