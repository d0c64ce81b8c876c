"""The MLflow record: a live record of every training job, and one experiment per paper table.

Experiments
    ``training-runs/<dataset>``  one MLflow run per `dmlrepro train` job, named by the run id
        (e.g. glyphs/efficientnet_lite0/triplet/seed0). A hyphen never occurs in a paper's name,
        so these names cannot meet a table's.
    ``<paper>/<table>`` (and ``<paper>/<sweep>``)  one entry per (row, dataset, seed) of a table
        or figure, written by `dmlrepro table` / `dmlrepro figure`, linked to its training run,
        with its dataset input, source and time span.
    ``claims/<paper>``  one entry per (claim, protocol), written by `dmlrepro claims`: our paired
        difference, its interval, n and the published difference as metrics, the verdict as a tag.

A training run is opened when training starts (:class:`TrainingTracker`), with the flattened run
configuration as parameters, the dataset as an MLflow dataset input (name = the dataset, digest =
the first 16 hex digits of its manifest.csv's sha256, source = ``{"uri": <the manifest's path>}``
as MLflow's local sources write it, profile = ``{"manifest_sha256": <all of it>}``) and these tags:
``run`` (the run id), ``config_hash``, ``method``, ``dataset``, ``backbone``, ``seed``,
``features`` (the features file), ``test_every_epoch``, ``git_commit`` (also as
``mlflow.source.git.commit``), ``git_dirty`` (``git status --porcelain`` lists something outside
results/, whose metrics, histories and tables are committed outputs) and
``attempts``. Every epoch logs, with step = epoch, ``train_loss``, ``embedding_norm``, ``lr``,
``epoch_seconds`` and ``val_<metric>`` (``test_<metric>`` with --test-every-epoch; ``@`` is spelt
``_at_``, e.g. ``val_recall_at_1``) as the epoch ends. At the end model.pt and history.json are
logged as artifacts, the tags ``model_md5`` (DVC's hash of model.pt, as dvc.lock records it) and
``model_path`` are set (:mod:`.provenance`) and the run is FINISHED; `dmlrepro evaluate` then adds
metrics.json, the final metrics (``final_<protocol>_<metric>``, ``best_epoch``,
``test_best_epoch``) and the tag ``metrics_sha256``. A method that wraps its loss in a
regulariser also gets the tag ``method_note`` (e.g. ``DA (reconstructed)``), here and on its
table entries; the regulariser's arguments are params like every other key of the method.

Statuses: FINISHED on success; FAILED on an exception (a diverged loss, a missing input, any
error; the tag ``failure`` holds the message); KILLED on KeyboardInterrupt (SIGINT), SystemExit and
SIGTERM (`dmlrepro train` turns SIGTERM, which Snakemake sends to a cancelled job, into SystemExit
so the status gets written). The run id is stored in the trainer's checkpoint, so a resumed job
reopens the same run (RUNNING again, ``attempts`` + 1, the git tags of the latest attempt) and
continues its epochs; a job killed before its first checkpoint leaves a KILLED run without epochs
and its rerun opens a new one. Each attempt records ``pid`` and ``hostname`` as tags: a job killed
by SIGKILL (the OOM killer, a lost node) cannot mark its run, so the next attempt of the same run
id and ``config_hash`` finds it, under the store lock, RUNNING with its process gone (on this host),
marks it KILLED (tag ``killed_found``) and continues it as a single run. Each attempt's outcome is
kept as a tag ``attempt_<n>`` (``FINISHED``, ``KILLED: ...``, ``FAILED: ...``); a run that finishes
drops the ``failure`` tag an earlier attempt left. The run id is also stored in history.json and model.pt
(``mlflow_run_id``), which is how evaluate and the table entries find it. Every execution of
`dmlrepro train` is one training run: Snakemake and DVC rerun training only after a change to its
code, data or configuration, so the training experiment is the history of those changes.

Table entries: each carries the run's parameters, per-epoch metrics and final metrics, the tags
``paper``, ``table``, ``row``, ``method``, ``dataset``, ``seed``, ``run``, ``config_hash``,
``git_commit``, ``git_dirty``, ``metrics_sha256`` (of the run's metrics.json), ``training_run_id``
and ``training_experiment_id``, and a description (``mlflow.note.content``) linking the training
run. Update rule: an entry is identified by (row, dataset, seed) within its experiment. A rerun
finds the active entry; if it is FINISHED with the same ``metrics_sha256`` and
``training_run_id``, nothing is written. Otherwise (metrics.json changed, the run was retrained
after a change of code, data or configuration, or the entry was left unfinished by a killed job)
the old entry is deleted (MLflow's soft delete: the UI lists it under "deleted" until `mlflow gc`)
and a complete new one is logged: MLflow parameters cannot change value, so an entry is replaced,
never edited. There is never more than one active entry per key, and entries whose key the
declaration no longer has are deleted the same way.

Store and concurrency: MLflow is imported lazily (its import costs over a second) and only
through ``MlflowClient`` (never the fluent API's global state). With a sqlite store, every write
(and the schema creation, done once by `dmlrepro mlflow-init` before parallel jobs start) happens
under one file lock, ``<db>.lock`` (bounded waits, busy retries and a corrupt store's message:
:mod:`.store`), held only for a short batch of writes, so parallel jobs never
create the schema concurrently (which corrupts it) nor contend for sqlite's write lock. That lock
holds on one machine only: jobs spread over a cluster's nodes write to a tracking server instead
(``tracking_uri: http://host:5000``, `mlflow server` with a PostgreSQL backend store:
workflow/scripts/mlflow_server.sh), which serialises writes itself; there no lock is taken,
`dmlrepro mlflow-init` only checks that the server answers (an error naming the URI if not), and
two jobs that create the same experiment at once both end up with the one that won.

Artifacts go to ``mlflow.artifact_root`` (default ``mlartifacts`` beside the sqlite file, which
is where `mlflow server` keeps its own; a relative path is taken from the db's folder), under the
experiment's name, fixed when the experiment is created (MLflow would otherwise use ./mlruns of
whatever directory the first job ran in). With a server URI (http://, https://) a path is ignored:
the server's default holds (its ``--artifacts-destination``, uploaded through the server); only
a URI (s3://...) is used as given.

The UI: every experiment is tagged ``mlflow.experimentKind = custom_model_development``. MLflow
3.17's UI, however, ignores that tag when it picks an experiment's view: it derives the kind from
its "workflow type" switch (the ``workflowType`` URL parameter, else the browser's stored choice,
``localStorage["mlflow.workflowType_v1"]``, which defaults to GenAI). :func:`ui_url` gives a link
with ``?workflowType=machine_learning``, which opens the runs table (e.g.
http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning); choosing "Model training" in
the sidebar's "GenAI | Model training" switch once makes it that browser's default.
"""
from __future__ import annotations

import functools
import getpass
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import DmlReproError
from ..hashing import sha256_file
from ..readers import read_json
from ..study.declarations import Sweep, Table
from ..study.runs import Run, flatten as flatten_keys
from .store import RetryingClient, StoreError, lock_wait, process_gone, sqlite_file as _sqlite_file, store_lock

TRAINING_EXPERIMENT = "training-runs/{dataset}"
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
UI_QUERY = "?workflowType=machine_learning"
DEFAULT_ARTIFACT_ROOT = "mlartifacts"
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch limits


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def init_store(uri: str, wait: float | None = None) -> None:
    """Create the tracking store once (schema migrations), before parallel jobs start; for a
    tracking server, check that it answers (its own store is the server's business)."""
    if _is_server(uri):
        check_server(uri)
        return
    with store_lock(uri, wait):
        _client(uri, wait).search_experiments(max_results=1)


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Raise DmlReproError, naming `uri`, unless an MLflow tracking server answers there: its
    /health at once, then its API (which MLflow's client retries for minutes when nobody answers)."""
    import urllib.error
    import urllib.request

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    health = f"{uri.rstrip('/')}/health"
    fix = ("start it (workflow/scripts/mlflow_server.sh) on a host that every node reaches, or correct "
           "params.yaml's mlflow.tracking_uri")
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403):  # behind authentication it answers; the client has the credentials
            raise DmlReproError(f"the MLflow tracking server {uri} does not answer: {health} "
                                f"returned HTTP {exc.code}; {fix}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DmlReproError(f"the MLflow tracking server {uri} does not answer ({health}: "
                            f"{getattr(exc, 'reason', exc)}); {fix}") from None
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as exc:
        raise DmlReproError(f"the MLflow tracking server {uri} answers, but its API fails: {exc}") from None


def artifact_root(params: dict) -> str | None:
    """Where experiments created here keep their artifacts (a URI), or None for the server's default."""
    cfg = params["mlflow"]
    root = cfg.get("artifact_root")
    if root and "://" in str(root):
        return str(root)
    if _is_server(cfg["tracking_uri"]):  # a path here means nothing to the server: its default
        return None
    db = _sqlite_file(cfg["tracking_uri"])
    if db is None:
        return Path(root).resolve().as_uri() if root else None
    return (db.resolve().parent / (root or DEFAULT_ARTIFACT_ROOT)).as_uri()


def ui_url(experiment_id: str, run_id: str | None = None, base: str = "") -> str:
    """A link into the MLflow UI (relative to its address unless `base` is given) that opens the
    runs view, not MLflow 3's GenAI overview."""
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "/runs")
    return f"{base.rstrip('/')}/{page}{UI_QUERY}" if base else f"{page}{UI_QUERY}"


# The pipeline's small outputs are committed to git (metrics, histories, tables; see .gitignore): a
# build writing them does not make the tree dirty.
_OUTPUTS_IN_GIT = ("results",)


@functools.lru_cache(maxsize=None)
def git_state(cwd: str | None = None) -> dict:
    """{'git_commit': sha or 'unknown', 'git_dirty': 'true' | 'false' | 'unknown'} (outputs under
    results/ do not count as dirty)."""
    def git(*args):
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, cwd=cwd)
        return out.stdout if out.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--", ":/", *(f":(top,exclude){p}" for p in _OUTPUTS_IN_GIT))
    except (OSError, subprocess.TimeoutExpired):
        commit = status = None
    return {"git_commit": commit.strip() if commit else "unknown",
            "git_dirty": "unknown" if status is None else str(bool(status.strip())).lower()}


def git_commit() -> str:
    return git_state()["git_commit"]


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config -> {dotted key: string} as MLflow params (lists as JSON)."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
            for k, v in flatten_keys(d, prefix).items()}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metric_name(split: str, metric: str) -> str:
    return f"{split}_{metric.replace('@', '_at_')}"  # '@' is not allowed in MLflow metric names


def epoch_metrics(entry: dict, timestamp: int | None = None) -> list:
    """MLflow metrics (step = epoch) of one history.json epoch entry."""
    from mlflow.entities import Metric

    ts, step = _now_ms() if timestamp is None else timestamp, entry["epoch"]
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

    ts = _now_ms() if timestamp is None else timestamp
    values = [Metric(_metric_name(f"final_{block}", k), float(v), ts, 0)
              for block, per_metric in metrics.items() if isinstance(per_metric, dict) for k, v in per_metric.items()]
    for key, value in metrics.items():  # best_epoch and each set's best-on-test epoch (test_best_epoch ...)
        if key.endswith("best_epoch") and value is not None:
            values.append(Metric(key, float(value), ts, 0))
    return values


def _log_params(client, run_id: str, flat: dict, already: dict | None = None) -> None:
    from mlflow.entities import Param

    new = [Param(k[:250], v[:6000]) for k, v in flat.items() if k[:250] not in (already or {})]
    for i in range(0, len(new), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=new[i : i + _PARAMS_PER_BATCH])


def _log_metrics(client, run_id: str, values: list) -> None:
    for i in range(0, len(values), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=values[i : i + _METRICS_PER_BATCH])


def _experiment(client, name: str, root: str | None, tags: dict) -> str:
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


def _client(uri: str, wait: float | None = None):
    """A client of the store whose calls retry sqlite's busy errors and name a corrupt store (:mod:`.store`)."""
    return RetryingClient(uri, wait)


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


# ---------------------------------------------------------------------------------------------
# Training runs


class TrainingTracker:
    """The live MLflow run of one training job.

    Use it as a context manager around ``train_run(..., tracker=tracker)``: the trainer calls
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
            self._mlflow = _client(self.uri, self.wait)
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
        from ..config import dataset_dir
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
            self.experiment_id = _experiment(client, TRAINING_EXPERIMENT.format(dataset=self.run.dataset),
                                             artifact_root(self.params), {"dataset": self.run.dataset})
            previous = None
            if resume_id:
                try:
                    previous = client.get_run(resume_id)
                except MlflowException as exc:
                    if not _not_found(exc):
                        raise
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
                self.run_id = client.create_run(self.experiment_id, start_time=_now_ms(),
                                                tags={**tags, "attempts": "1"}, run_name=self.run.id).info.run_id
                logged_params, has_dataset = {}, False
                _log_metrics(client, self.run_id, [m for e in done_epochs or [] for m in epoch_metrics(e)])
            _log_params(client, self.run_id, flatten(self.run.config), logged_params)
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
        client.set_terminated(orphan.info.run_id, "KILLED", end_time=_now_ms())
        print(f"MLflow: training run {orphan.info.run_id} of {self.run.id} was RUNNING, but its job "
              f"(pid {tags.get('pid')}) is gone: marked KILLED" + ("; this attempt continues it" if adopted else ""),
              file=sys.stderr)

    def log_epoch(self, entry: dict) -> None:
        with store_lock(self.uri, self.wait):
            _log_metrics(self.client, self.run_id, epoch_metrics(entry))

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
            self.client.set_terminated(self.run_id, "FINISHED", end_time=_now_ms())
        self.finished = True

    def end(self, status: str, why: str = "") -> None:
        """Mark the run `status` (FAILED or KILLED), opening one first if training never started."""
        if self.run_id is None:
            self.start(None)
        with store_lock(self.uri, self.wait):
            self.client.set_tag(self.run_id, f"attempt_{self.attempt}", f"{status}: {why}"[:5000])
            if why:
                self.client.set_tag(self.run_id, "failure", why[:5000])
            self.client.set_terminated(self.run_id, status, end_time=_now_ms())

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
    from mlflow.exceptions import MlflowException

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
        client = _client(uri, lock_wait(params))
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            print(f"MLflow: training run {run_id} is not in {uri}; nothing logged", file=sys.stderr)
            return None
        _log_metrics(client, run_id, final_metrics(metrics))
        client.set_tag(run_id, "metrics_sha256", sha256_file(metrics_file))
        client.log_artifact(run_id, str(metrics_file))
    return run_id


# ---------------------------------------------------------------------------------------------
# Paper tables and figures


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
    ts = _now_ms()
    values = [m for entry in history["epochs"] for m in epoch_metrics(entry, ts)] + final_metrics(metrics, ts)
    return {"config_hash": metrics["config_hash"], "metrics_sha256": sha256_file(metrics_file),
            "training_run_id": history.get("mlflow_run_id") or "", "params": flatten(run.config), "metrics": values,
            "seconds": sum(e.get("seconds", 0.0) for e in history["epochs"])}


def _all_runs(client, exp_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _training_run(client, training_run_id: str, cache: dict):
    """The training run of that id (None when trained without tracking or not in this store)."""
    from mlflow.exceptions import MlflowException

    if training_run_id and training_run_id not in cache:
        try:
            cache[training_run_id] = client.get_run(training_run_id)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            cache[training_run_id] = None
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
        end = _now_ms()
        span, inputs = (end - int(1000 * history_seconds), end), []
    return {"start_time": span[0], "end_time": span[1], "inputs": inputs}


def log_target(params: dict, target: Table | Sweep) -> int:
    """Log every (row, dataset, seed) of a table or figure to its experiment (named PAPER/NAME),
    following the module's update rule; return how many entries were written (new or replaced)."""
    uri = params["mlflow"]["tracking_uri"]
    git = git_state()
    payloads = [(label.replace("'", ""), run, _run_payload(params, run)) for label, run in _entries(target)]
    written = 0
    with store_lock(uri, lock_wait(params)):
        client = _client(uri, lock_wait(params))
        exp_id = _experiment(client, target.ref, artifact_root(params), {"paper": target.paper, "table": target.name})
        existing: dict[tuple, list] = {}
        for found in _all_runs(client, exp_id):
            t = found.data.tags
            existing.setdefault((t.get("row"), t.get("dataset"), t.get("seed")), []).append(found)
        links: dict = {}
        for row, run, payload in payloads:
            key = (row, run.dataset, str(run.seed))
            old = existing.pop(key, [])
            if len(old) == 1 and old[0].info.status == "FINISHED" \
                    and old[0].data.tags.get("metrics_sha256") == payload["metrics_sha256"] \
                    and old[0].data.tags.get("training_run_id", "") == payload["training_run_id"]:
                continue
            for stale in old:  # changed, retrained, or left unfinished by a killed job
                client.delete_run(stale.info.run_id)
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
            _log_params(client, run_id, payload["params"])
            _log_metrics(client, run_id, payload["metrics"])
            if trained["inputs"]:
                client.log_inputs(run_id, datasets=trained["inputs"])
            client.set_terminated(run_id, "FINISHED", end_time=trained["end_time"])
            written += 1
        for gone in existing.values():  # rows, datasets or seeds the declaration no longer has
            for stale in gone:
                client.delete_run(stale.info.run_id)
    return written


# ---------------------------------------------------------------------------------------------
# Claims

CLAIMS_EXPERIMENT = "claims/{paper}"


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
        client = _client(uri)
        exp_id = _experiment(client, CLAIMS_EXPERIMENT.format(paper=paper), artifact_root(params), {"paper": paper})
        existing: dict[str, list] = {}
        for found in _all_runs(client, exp_id):
            existing.setdefault(found.data.tags.get("claim", ""), []).append(found)
        for result, record in zip(results, records(results)):
            key = f"{result.claim.id} ({result.protocol})"
            digest = json.dumps(record, sort_keys=True, default=str)
            old = existing.pop(key, [])
            if len(old) == 1 and old[0].data.tags.get("record") == digest[:5000]:
                continue
            for stale in old:
                client.delete_run(stale.info.run_id)
            tags = {"claim": key, "record": digest[:5000], "verdict": record["verdict"], "table": record["table"],
                    "base": record["base"], "method": record["method"], "column": record["column"],
                    "dataset": record["dataset"], "stand_in_for": record["stand_in_for"],
                    "protocol": record["protocol"], "source": record["source"], **git,
                    "mlflow.source.name": "dmlrepro claims", "mlflow.source.type": "LOCAL",
                    "mlflow.note.content": f"{key}: {record['verdict']}" + (f" ({record['note']})" if record["note"] else "")}
            run_id = client.create_run(exp_id, tags=tags, run_name=key[:250]).info.run_id
            _log_params(client, run_id, {k: str(record[k]) for k in ("base", "method", "column", "metric", "split",
                                                                       "protocol", "published_base", "published_method")})
            values = {k: record[k] for k in ("ours_diff", "ci95_low", "ci95_high", "n", "published_diff", "ratio")
                      if record[k] is not None}
            _log_metrics(client, run_id, [Metric(k, float(v), _now_ms(), 0) for k, v in values.items()])
            client.set_terminated(run_id, "FINISHED")
            written += 1
        for gone in existing.values():
            for stale in gone:
                client.delete_run(stale.info.run_id)
    return written
