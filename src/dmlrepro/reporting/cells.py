"""What a table cell reads: one metric of one run under one protocol from its metrics.json (checked
against the run's configuration), and how a column is headed."""
from __future__ import annotations

from ..errors import DmlReproError
from ..readers import read_json
from ..evaluation.sets import metrics_block
from ..study.runs import Run


def metrics_file(params: dict, run: Run):
    """Where the evaluate stage writes a run's metrics."""
    return run.dir(params) / "metrics.json"


def read_metrics(params: dict, run: Run) -> dict:
    path = metrics_file(params, run)
    if not path.exists():
        raise DmlReproError(f"{path} is missing; run `dmlrepro evaluate --run {run.id}` (or the whole pipeline) first")
    metrics = read_json(path, "metrics file", f"dmlrepro evaluate --run {run.id}")
    if not isinstance(metrics, dict) or metrics.get("config_hash") != run.hash:
        raise DmlReproError(f"{path} comes from another configuration of {run.id} (hash {metrics.get('config_hash')},"
                            f" now {run.hash}); rerun `dmlrepro train --run {run.id}` and `dmlrepro evaluate --run {run.id}`")
    return metrics


def metric_value(params: dict, run: Run, protocol: str, split: str, metric: str) -> float:
    metrics = read_metrics(params, run)
    block = "val" if split == "val" else metrics_block(split, protocol)
    if block not in metrics:
        raise DmlReproError(f"{run.dir(params) / 'metrics.json'} has no {block!r} metrics (protocol {protocol}); "
                            f"rerun the pipeline: the study now asks for them")
    if metric not in metrics[block]:
        raise DmlReproError(f"{run.dir(params) / 'metrics.json'} has no {metric} under {block!r}; rerun "
                            f"`dmlrepro evaluate --run {run.id}` with the flags the study gives (`dmlrepro list runs`)")
    return metrics[block][metric]


def column_header(col: dict) -> str:
    dataset = f"{col['dataset']} ({col['as']} stand-in)" if col.get("as") else col["dataset"]
    split = "" if col.get("split", "test") == "test" else f" [{col['split']}]"
    return f"{dataset} {col.get('header', col['metric'])}{split}"
