"""MLflow experiments and their entries, as the training record and the table record write them.

An experiment is created once with a fixed artifact location (MLflow would otherwise use ./mlruns
of whatever directory the first job ran in) and the tag that asks the UI for its runs view, or
restored if it was deleted; params and metrics are written in batches within MLflow's limits; an
experiment's runs are read page by page; a run that is not in the store is None, not an error.
:func:`ui_url` links into the UI's runs table. Call the writers under the store's lock
(:func:`.store.store_lock`) with a :class:`.store.RetryingClient`. Design notes: docs/mlflow.md.
"""
from __future__ import annotations

import time
from typing import Callable, Hashable

KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
UI_QUERY = "?workflowType=machine_learning"
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch limits


def now_ms() -> int:
    return int(time.time() * 1000)


def ui_url(experiment_id: str, run_id: str | None = None, base: str = "") -> str:
    """A link into the MLflow UI (relative to its address unless `base` is given) that opens the
    runs view, not MLflow 3's GenAI overview."""
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "/runs")
    return f"{base.rstrip('/')}/{page}{UI_QUERY}" if base else f"{page}{UI_QUERY}"


def experiment(client, name: str, root: str | None, tags: dict) -> str:
    """The id of experiment `name`, created (with a fixed artifact location) or restored if needed;
    its tags (the UI's kind among them) are set when missing. Call under the store lock."""
    from mlflow.exceptions import MlflowException

    tags = {KIND_TAG: KIND, **tags}
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags=tags,
                                            artifact_location=f"{root.rstrip('/')}/{name}" if root else None)
        except MlflowException as exc:  # a server store: another job created it first
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    for key, value in tags.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def find_run(client, run_id: str):
    """The run of that id, or None when the store does not hold it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None


def runs_by(client, exp_id: str, key: Callable[[dict], Hashable]) -> dict[Hashable, list]:
    """Every run of an experiment, grouped by `key` of its tags."""
    grouped: dict[Hashable, list] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        for found in page:
            grouped.setdefault(key(found.data.tags), []).append(found)
        token = page.token
        if not token:
            return grouped


def delete_runs(client, runs: list) -> None:
    """MLflow's soft delete: the UI lists them under "deleted" until `mlflow gc`."""
    for stale in runs:
        client.delete_run(stale.info.run_id)


def log_params(client, run_id: str, flat: dict, already: dict | None = None) -> None:
    """Log {key: string} as params (keys and values cut to MLflow's limits), but those in `already`."""
    from mlflow.entities import Param

    new = [Param(k[:250], v[:6000]) for k, v in flat.items() if k[:250] not in (already or {})]
    for i in range(0, len(new), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=new[i : i + _PARAMS_PER_BATCH])


def log_metrics(client, run_id: str, values: list) -> None:
    for i in range(0, len(values), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=values[i : i + _METRICS_PER_BATCH])
