"""The MLflow record of a training job: one run per `dmlrepro train` job, live while it trains.

:class:`TrainingTracker` opens the run in the experiment ``training-runs/<dataset>`` when training
starts (the flattened configuration as params, the dataset's manifest as an MLflow dataset input,
the run's identity and source as tags), logs each epoch's metrics as the epoch ends, logs model.pt
and history.json at the end, and marks the run FINISHED, FAILED (an exception) or KILLED
(an interrupt, SIGTERM; a SIGKILLed job's run is found and marked by its next attempt). A resumed
job reopens the same run. :func:`log_evaluation` adds `dmlrepro evaluate`'s metrics.json.
Why a live record, and every tag, metric and status: docs/mlflow.md.
"""
from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..hashing import sha256_file
from ..readers import read_json
from ..study.runs import Run, flatten
from .experiments import experiment, find_run, log_metrics, log_params, now_ms
from .git_state import git_state
from .store import RetryingClient, StoreError, artifact_root, lock_wait, process_gone, store_lock

TRAINING_EXPERIMENT = "training-runs/{dataset}"


def mlflow_params(config: dict) -> dict:
    """A run's nested configuration as MLflow params: {dotted key: string} (lists as JSON)."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in flatten(config).items()}


def _metric_name(split: str, metric: str) -> str:
    return f"{split}_{metric.replace('@', '_at_')}"  # '@' is not allowed in MLflow metric names


def epoch_metrics(entry: dict, timestamp: int | None = None) -> list:
    """MLflow metrics (step = epoch) of one history.json epoch entry."""
    from mlflow.entities import Metric

    ts, step = now_ms() if timestamp is None else timestamp, entry["epoch"]
    values = [Metric(name, float(entry[key]), ts, step) for key, name in
              (("loss", "train_loss"), ("embedding_norm", "embedding_norm"), ("lr", "lr"),
               ("seconds", "epoch_seconds")) if entry.get(key) is not None]
    for split, block in entry.items():  # val and every evaluation set (test, test_800 ...)
        if isinstance(block, dict):
            values += [Metric(_metric_name(split, k), float(v), ts, step) for k, v in block.items()]
    return values


def final_metrics(metrics: dict, timestamp: int | None = None) -> list:
    """MLflow metrics of a metrics.json: final_<protocol>_<metric> and best_epoch (step 0)."""
    from mlflow.entities import Metric

    ts = now_ms() if timestamp is None else timestamp
    values = [Metric(_metric_name(f"final_{block}", k), float(v), ts, 0)
              for block, per_metric in metrics.items() if isinstance(per_metric, dict) for k, v in per_metric.items()]
    for key, value in metrics.items():  # best_epoch and each set's best-on-test epoch (test_best_epoch ...)
        if key.endswith("best_epoch") and value is not None:
            values.append(Metric(key, float(value), ts, 0))
    return values


class TrainingTracker:
    """The live MLflow run of one training job.

    Use it as a context manager around ``train_frozen`` / ``train_finetune(..., tracker=tracker)``
    (the train stage does): the trainer calls
    :meth:`start` once it has read its checkpoint (with the run id the checkpoint holds, if any),
    :meth:`log_epoch` after every epoch and :meth:`finish` once model.pt and history.json are
    written; leaving the context by an exception marks the run FAILED or KILLED (and opens one
    first if the job failed before training started)."""

    def __init__(self, params: dict, run: Run, test_every_epoch: bool = False):
        self.params, self.run, self.test_every_epoch = params, run, test_every_epoch
        self.uri = params["mlflow"]["tracking_uri"]
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.finished = False
        self.attempt = 1
        self.wait = lock_wait(params)
        self._mlflow = None

    @property
    def client(self):
        if self._mlflow is None:
            self._mlflow = RetryingClient(self.uri, self.wait)
        return self._mlflow

    def _tags(self) -> dict:
        run = self.run
        git = git_state()
        return {"run": run.id, "config_hash": run.hash, "method": run.method, "dataset": run.dataset,
                "backbone": run.backbone, "seed": str(run.seed), "features": str(run.features.path(self.params)),
                "test_every_epoch": str(self.test_every_epoch).lower(), **git,
                "mlflow.source.git.commit": git["git_commit"], "mlflow.source.name": "dmlrepro train",
                "mlflow.source.type": "LOCAL", "mlflow.user": _user(), **method_note(run)}

    def _dataset_input(self):
        from ..paths import dataset_dir
        from mlflow.entities import Dataset, DatasetInput, InputTag

        manifest = dataset_dir(self.params, self.run.dataset) / "manifest.csv"
        if not manifest.is_file():
            print(f"warning: no {manifest}; the MLflow run gets no dataset input", file=sys.stderr)
            return None
        sha = sha256_file(manifest)
        dataset = Dataset(name=self.run.dataset, digest=sha[:16], source_type="local",
                          source=json.dumps({"uri": str(manifest.resolve())}),
                          profile=json.dumps({"manifest_sha256": sha}))
        return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])

    def start(self, resume_id: str | None = None, done_epochs: list | None = None) -> str:
        """Open the run (or reopen `resume_id`, the run a checkpoint was written for, or an orphan:
        see :meth:`_orphans`); return its id. done_epochs: the history entries a checkpoint already
        holds, logged if the run is new."""
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        tags = {**self._tags(), "pid": str(os.getpid()), "hostname": socket.gethostname()}
        dataset = self._dataset_input()
        with store_lock(self.uri, self.wait):
            client = self.client
            self.experiment_id = experiment(client, TRAINING_EXPERIMENT.format(dataset=self.run.dataset),
                                            artifact_root(self.params), {"dataset": self.run.dataset})
            previous = find_run(client, resume_id) if resume_id else None
            if previous is not None and (previous.info.lifecycle_stage != "active"
                                         or previous.info.experiment_id != self.experiment_id
                                         or previous.data.tags.get("config_hash") != self.run.hash):
                previous = None
            orphans = self._orphans(client)
            if previous is None and orphans and not done_epochs:
                previous = orphans[-1]  # the newest: this attempt continues it
            for orphan in orphans:
                self._mark_orphan(client, orphan, adopted=previous is not None
                                  and orphan.info.run_id == previous.info.run_id)
            if previous is not None:
                self.run_id = previous.info.run_id
                client.update_run(self.run_id, status="RUNNING")
                self.attempt = int(previous.data.tags.get("attempts", "1")) + 1
                client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in {**tags, "attempts": str(self.attempt)}.items()
                                                    if previous.data.tags.get(k) != v])
                logged_params = previous.data.params
                inputs = previous.inputs.dataset_inputs if previous.inputs else []
                has_dataset = dataset is not None and any(i.dataset.digest == dataset.dataset.digest for i in inputs)
            else:
                self.run_id = client.create_run(self.experiment_id, start_time=now_ms(),
                                                tags={**tags, "attempts": "1"}, run_name=self.run.id).info.run_id
                logged_params, has_dataset = {}, False
                log_metrics(client, self.run_id, [m for e in done_epochs or [] for m in epoch_metrics(e)])
            log_params(client, self.run_id, mlflow_params(self.run.config), logged_params)
            if dataset is not None and not has_dataset:
                try:
                    client.log_inputs(self.run_id, datasets=[dataset])
                except MlflowException:  # a server store: a parallel job inserted the same dataset first
                    client.log_inputs(self.run_id, datasets=[dataset])  # now it exists: only the link is added
        return self.run_id

    def _orphans(self, client) -> list:
        """Older RUNNING runs of this run id and configuration whose job is gone (its pid, recorded
        as a tag, no longer runs on this host: SIGKILL, the OOM killer), oldest first."""
        query = (f"attributes.status = 'RUNNING' and tags.run = '{self.run.id}' "
                 f"and tags.config_hash = '{self.run.hash}'")
        found = client.search_runs([self.experiment_id], query, order_by=["attributes.start_time ASC"])
        return [r for r in found if process_gone(r.data.tags.get("pid"), r.data.tags.get("hostname"))]

    def _mark_orphan(self, client, orphan, adopted: bool) -> None:
        """Mark an orphan KILLED, with how it was found in its attempt's tag."""
        tags = orphan.data.tags
        attempt = tags.get("attempts", "1")
        how = (f"KILLED: found RUNNING with its process gone (pid {tags.get('pid')} on {tags.get('hostname')}) "
               f"by pid {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
               + ("; the next attempt continued this run" if adopted else ""))
        client.set_tag(orphan.info.run_id, f"attempt_{attempt}", how[:5000])
        client.set_tag(orphan.info.run_id, "killed_found", "process gone (found by a later attempt)")
        client.set_terminated(orphan.info.run_id, "KILLED", end_time=now_ms())
        print(f"MLflow: training run {orphan.info.run_id} of {self.run.id} was RUNNING, but its job "
              f"(pid {tags.get('pid')}) is gone: marked KILLED" + ("; this attempt continues it" if adopted else ""),
              file=sys.stderr)

    def log_epoch(self, entry: dict) -> None:
        with store_lock(self.uri, self.wait):
            log_metrics(self.client, self.run_id, epoch_metrics(entry))

    def finish(self, out_dir: Path) -> None:
        """Log model.pt and history.json, tag the model's DVC hash (model_md5, model_path: see
        :mod:`.provenance`) and mark the run FINISHED."""
        from .provenance import model_tags

        tags = model_tags(Path(out_dir) / "model.pt")
        with store_lock(self.uri, self.wait):
            for name in ("model.pt", "history.json"):
                if (Path(out_dir) / name).is_file():
                    self.client.log_artifact(self.run_id, str(Path(out_dir) / name))
            for key, value in {**tags, f"attempt_{self.attempt}": "FINISHED"}.items():
                self.client.set_tag(self.run_id, key, value)
            if "failure" in self.client.get_run(self.run_id).data.tags:  # an earlier attempt's: its
                self.client.delete_tag(self.run_id, "failure")           # attempt_<n> tag keeps it
            self.client.set_terminated(self.run_id, "FINISHED", end_time=now_ms())
        self.finished = True

    def end(self, status: str, why: str = "") -> None:
        """Mark the run `status` (FAILED or KILLED), opening one first if training never started."""
        if self.run_id is None:
            self.start(None)
        with store_lock(self.uri, self.wait):
            self.client.set_tag(self.run_id, f"attempt_{self.attempt}", f"{status}: {why}"[:5000])
            if why:
                self.client.set_tag(self.run_id, "failure", why[:5000])
            self.client.set_terminated(self.run_id, status, end_time=now_ms())

    def __enter__(self) -> "TrainingTracker":
        return self

    def __exit__(self, etype, exc, tb) -> bool:
        if etype is None or self.finished or issubclass(etype, StoreError):  # no record can be written
            return False
        status = "KILLED" if issubclass(etype, (KeyboardInterrupt, SystemExit)) else "FAILED"
        try:
            self.end(status, f"{etype.__name__}: {exc}")
            print(f"MLflow: training run {self.run_id} marked {status}", file=sys.stderr)
        except Exception as err:  # the job's own error is what matters; never hide it
            print(f"warning: could not mark the MLflow run {status}: {err}", file=sys.stderr)
        return False


def method_note(run: Run) -> dict:
    """{'method_note': 'DA (reconstructed)'} for a method wrapped in a regulariser, else {}."""
    from ..methods import method_labels

    labels = method_labels(run.config["method"])
    return {"method_note": ", ".join(labels)} if labels else {}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def log_evaluation(params: dict, run: Run, run_dir: Path) -> str | None:
    """Add metrics.json (artifact, final metrics, its sha256 as a tag) to the run's training run;
    return that run's id, or None (with a note on stderr) when there is none to log to."""
    history_file = run_dir / "history.json"
    history = read_json(history_file, "training history", f"dmlrepro train --run {run.id}") \
        if history_file.is_file() else {}
    run_id = history.get("mlflow_run_id") if isinstance(history, dict) else None
    if not run_id:
        print(f"MLflow: {history_file} names no training run (trained without tracking); "
              "nothing logged", file=sys.stderr)
        return None
    metrics_file = run_dir / "metrics.json"
    metrics = read_json(metrics_file, "metrics file", f"dmlrepro evaluate --run {run.id}")
    uri = params["mlflow"]["tracking_uri"]
    with store_lock(uri, lock_wait(params)):
        client = RetryingClient(uri, lock_wait(params))
        if find_run(client, run_id) is None:
            print(f"MLflow: training run {run_id} is not in {uri}; nothing logged", file=sys.stderr)
            return None
        log_metrics(client, run_id, final_metrics(metrics))
        client.set_tag(run_id, "metrics_sha256", sha256_file(metrics_file))
        client.log_artifact(run_id, str(metrics_file))
    return run_id
