"""The MLflow record of the paper's tables, figures and claims: one experiment each.

`dmlrepro table` / `dmlrepro figure` log one entry per (row, dataset, seed) to the experiment
``<paper>/<table>`` (or ``<paper>/<sweep>``): the run's params, per-epoch and final metrics, its
identity and source as tags, a link to its training run and that run's dataset input and time span.
`dmlrepro claims` logs one entry per (claim, protocol) to ``claims/<paper>``: the paired difference,
its interval, n and the published difference as metrics, the verdict as a tag. An entry is kept
while its inputs are unchanged and replaced (deleted, then logged anew) when they change, since
MLflow params cannot change value; there is never more than one active entry per key, and keys the
declaration no longer has are deleted. The full update rule and every tag: docs/mlflow.md.
"""
from __future__ import annotations

import json

from ..hashing import sha256_file
from ..readers import read_json
from ..study.declarations import Sweep, Table
from ..study.runs import Run
from .experiments import delete_runs, experiment, find_run, log_metrics, log_params, now_ms, runs_by, ui_url
from .git_state import git_state
from .store import RetryingClient, artifact_root, lock_wait, store_lock
from .training_record import epoch_metrics, final_metrics, method_note, mlflow_params

CLAIMS_EXPERIMENT = "claims/{paper}"


def _entries(target: Table | Sweep) -> list[tuple[str, Run]]:
    """(row label, run) for every run a table or figure shows."""
    if isinstance(target, Table):
        return [(row.label, run) for row in target.rows for runs in row.runs.values() for run in runs]
    return [(f"{target.decl['parameter']}={p.value}", run) for p in target.points for run in p.runs]


def _run_payload(params: dict, run: Run) -> dict:
    folder = run.dir(params)
    metrics_file = folder / "metrics.json"
    metrics = read_json(metrics_file, "metrics file", f"dmlrepro evaluate --run {run.id}")
    history = read_json(folder / "history.json", "training history", f"dmlrepro train --run {run.id}")
    ts = now_ms()
    values = [m for entry in history["epochs"] for m in epoch_metrics(entry, ts)] + final_metrics(metrics, ts)
    return {"config_hash": metrics["config_hash"], "metrics_sha256": sha256_file(metrics_file),
            "training_run_id": history.get("mlflow_run_id") or "", "params": mlflow_params(run.config),
            "metrics": values, "seconds": sum(e.get("seconds", 0.0) for e in history["epochs"])}


def _training_run(client, training_run_id: str, cache: dict):
    """The training run of that id (None when trained without tracking or not in this store)."""
    if training_run_id and training_run_id not in cache:
        cache[training_run_id] = find_run(client, training_run_id)
    return cache.get(training_run_id) if training_run_id else None


def _training_link(training_run_id: str, training) -> tuple[str, str]:
    """(experiment id, markdown note) of a training run, or ('', note) when it is not in this store."""
    if not training_run_id:
        return "", "Trained without MLflow tracking: no training run is linked."
    if training is None:
        return "", f"Training run {training_run_id} (not in this tracking store)."
    exp_id, name = training.info.experiment_id, training.info.run_name
    return exp_id, f"Training run: [{name or training_run_id}]({ui_url(exp_id, training_run_id)})"


def _as_trained(training, history_seconds: float) -> dict:
    """What the UI's Dataset, Source and Duration columns show for an entry: its training run's
    dataset input, source and time span (without a training run: its epochs' seconds, ending now)."""
    if training is not None and training.info.end_time:
        span = (training.info.start_time, training.info.end_time)
        inputs = list(training.inputs.dataset_inputs) if training.inputs else []
    else:
        end = now_ms()
        span, inputs = (end - int(1000 * history_seconds), end), []
    return {"start_time": span[0], "end_time": span[1], "inputs": inputs}


def log_target(params: dict, target: Table | Sweep) -> int:
    """Log every (row, dataset, seed) of a table or figure to its experiment (named PAPER/NAME),
    following the update rule (docs/mlflow.md); return how many entries were written (new or replaced)."""
    uri = params["mlflow"]["tracking_uri"]
    git = git_state()
    payloads = [(label.replace("'", ""), run, _run_payload(params, run)) for label, run in _entries(target)]
    written = 0
    with store_lock(uri, lock_wait(params)):
        client = RetryingClient(uri, lock_wait(params))
        exp_id = experiment(client, target.ref, artifact_root(params), {"paper": target.paper, "table": target.name})
        existing = runs_by(client, exp_id, lambda t: (t.get("row"), t.get("dataset"), t.get("seed")))
        links: dict = {}
        for row, run, payload in payloads:
            key = (row, run.dataset, str(run.seed))
            old = existing.pop(key, [])
            if len(old) == 1 and old[0].info.status == "FINISHED" \
                    and old[0].data.tags.get("metrics_sha256") == payload["metrics_sha256"] \
                    and old[0].data.tags.get("training_run_id", "") == payload["training_run_id"]:
                continue
            delete_runs(client, old)  # changed, retrained, or left unfinished by a killed job
            training = _training_run(client, payload["training_run_id"], links)
            training_exp, note = _training_link(payload["training_run_id"], training)
            trained = _as_trained(training, payload["seconds"])
            tags = {"paper": target.paper, "table": target.name, "row": row, "method": run.method,
                    "dataset": run.dataset, "backbone": run.backbone, "seed": str(run.seed), "run": run.id,
                    "config_hash": payload["config_hash"], "metrics_sha256": payload["metrics_sha256"],
                    "training_run_id": payload["training_run_id"], "training_experiment_id": training_exp,
                    **git, "mlflow.source.git.commit": git["git_commit"], "mlflow.note.content": note,
                    "mlflow.source.name": "dmlrepro train", "mlflow.source.type": "LOCAL", **method_note(run)}
            run_id = client.create_run(exp_id, start_time=trained["start_time"], tags=tags,
                                       run_name=f"{row}/{run.dataset}/seed{run.seed}").info.run_id
            log_params(client, run_id, payload["params"])
            log_metrics(client, run_id, payload["metrics"])
            if trained["inputs"]:
                client.log_inputs(run_id, datasets=trained["inputs"])
            client.set_terminated(run_id, "FINISHED", end_time=trained["end_time"])
            written += 1
        for gone in existing.values():  # rows, datasets or seeds the declaration no longer has
            delete_runs(client, gone)
    return written


def log_claims(params: dict, paper: str, results: list) -> int:
    """One entry per (claim, protocol) in the experiment ``claims/<paper>``: the difference, its
    interval, n and the published difference as metrics, the verdict as a tag. An entry whose
    values are unchanged is kept; a changed one is replaced (MLflow params cannot change)."""
    from mlflow.entities import Metric

    from .claims import records

    uri = params["mlflow"]["tracking_uri"]
    git = git_state()
    written = 0
    with store_lock(uri):
        client = RetryingClient(uri)
        exp_id = experiment(client, CLAIMS_EXPERIMENT.format(paper=paper), artifact_root(params), {"paper": paper})
        existing = runs_by(client, exp_id, lambda t: t.get("claim", ""))
        for result, record in zip(results, records(results)):
            key = f"{result.claim.id} ({result.protocol})"
            digest = json.dumps(record, sort_keys=True, default=str)
            old = existing.pop(key, [])
            if len(old) == 1 and old[0].data.tags.get("record") == digest[:5000]:
                continue
            delete_runs(client, old)
            tags = {"claim": key, "record": digest[:5000], "verdict": record["verdict"], "table": record["table"],
                    "base": record["base"], "method": record["method"], "column": record["column"],
                    "dataset": record["dataset"], "stand_in_for": record["stand_in_for"],
                    "protocol": record["protocol"], "source": record["source"], **git,
                    "mlflow.source.name": "dmlrepro claims", "mlflow.source.type": "LOCAL",
                    "mlflow.note.content": f"{key}: {record['verdict']}" + (f" ({record['note']})" if record["note"] else "")}
            run_id = client.create_run(exp_id, tags=tags, run_name=key[:250]).info.run_id
            log_params(client, run_id, {k: str(record[k]) for k in ("base", "method", "column", "metric", "split",
                                                                      "protocol", "published_base", "published_method")})
            values = {k: record[k] for k in ("ours_diff", "ci95_low", "ci95_high", "n", "published_diff", "ratio")
                      if record[k] is not None}
            log_metrics(client, run_id, [Metric(k, float(v), now_ms(), 0) for k, v in values.items()])
            client.set_terminated(run_id, "FINISHED")
            written += 1
        for gone in existing.values():
            delete_runs(client, gone)
    return written
