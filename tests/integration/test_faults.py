"""Faults a long study meets, with the real CLI on the tiny fixture (issue 24): corrupt or truncated
files, NaN inputs, a full or read-only disk, a locked, busy or broken MLflow store, a SIGKILLed job,
an unusual learning rate. Each must end with a non-zero exit and a message naming the file or the
setting and a fix, no traceback, and no half-written declared output (or recover cleanly).

The full and read-only disks are simulated in process (`dmlrepro.cli.main` with monkeypatched
file-system calls): the tests run as any user, root included, on any file system."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import cli_env, make_workspace, nan_criterion, run, tiny_params

pytestmark = pytest.mark.integration

PAPER = """paper: faults
title: Faults
tables:
  t:
    columns: [{key: r1, dataset: glyphs, metric: recall@1}]
    rows: [{label: Contrastive, method: contrastive}]
"""
RUN = "glyphs/efficientnet_lite0/contrastive/seed0"
FEATURES = "glyphs/efficientnet_lite0.npz"
TRAINING = "training-runs/glyphs"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The glyphs fixture prepared and extracted, one run trained and evaluated, and an MLflow store
    with its schema (copied by every case)."""
    params = tiny_params(methods=("contrastive",), seeds=(0,))
    params["tables"], params["figures"] = ["faults/t"], []
    ws = make_workspace(tmp_path_factory.mktemp("faults"), params, papers={"faults": PAPER})
    run(["dmlrepro", "prepare", "--dataset", "glyphs"], ws)
    run(["dmlrepro", "extract", "--features", "glyphs/efficientnet_lite0"], ws)
    run(["dmlrepro", "mlflow-init"], ws)
    run(["dmlrepro", "train", "--run", RUN, "--no-mlflow"], ws)
    run(["dmlrepro", "evaluate", "--run", RUN, "--no-mlflow"], ws)
    return ws


def variant(ws: Path, folder: Path, trained: bool = False, mlflow: dict | None = None, **train) -> Path:
    """A params file whose runs, checkpoints, features (a copy) and MLflow store (a copy) lie in
    `folder`; with `trained`, the run's model.pt, history.json and metrics.json are copied too."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["paths"].update({"runs": str(folder / "runs"), "checkpoints": str(folder / "ckpt"),
                            "features": str(folder / "features"), "tables": str(folder / "tables")})
    (folder / "features/glyphs").mkdir(parents=True)
    shutil.copy(ws / "results/features" / FEATURES, folder / "features" / FEATURES)
    shutil.copy(ws / "mlflow.db", folder / "mlflow.db")
    params["mlflow"]["tracking_uri"] = f"sqlite:///{folder / 'mlflow.db'}"
    params["mlflow"].update(mlflow or {})
    params["train"].update(train)
    if trained:
        shutil.copytree(ws / "results/runs" / RUN, folder / "runs" / RUN)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def dml(ws: Path, pfile: Path, *args: str, env: dict | None = None, timeout: int = 600):
    return run(["dmlrepro", "--params", str(pfile), *args], ws, check=False, env=env, timeout=timeout)


def assert_clear(result, *names: str, code: int = 2) -> str:
    """Non-zero exit, a message naming each of `names`, no traceback; returns the error message."""
    err = result.stderr if hasattr(result, "stderr") else result
    assert getattr(result, "returncode", code) == code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    message = next((line for line in err.splitlines() if ": error: " in line), "")
    assert message, err[-3000:]
    for name in names:
        assert name in err, f"{name!r} not in:\n{err[-3000:]}"
    return message


def run_dir(folder: Path) -> Path:
    return folder / "runs" / RUN


def training_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    from dmlrepro.reporting.store import store_lock

    with store_lock(uri):
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(TRAINING)
        return [] if exp is None else list(client.search_runs([exp.experiment_id]))


def set_features(path: Path, key: str, index: tuple, value: float) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key][index] = value
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


# ---------------------------------------------------------------------------------------------
# Corrupt and truncated files


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_garbage_or_truncated_model_is_named_with_the_training_command(ws, tmp_path, damage):
    pfile = variant(ws, tmp_path, trained=True)
    model = run_dir(tmp_path) / "model.pt"
    (run_dir(tmp_path) / "metrics.json").unlink()
    data = model.read_bytes()
    model.write_bytes(b"not a model, garbage bytes" * 10 if damage == "garbage" else data[: len(data) // 2])
    result = dml(ws, pfile, "evaluate", "--run", RUN, "--no-mlflow")
    assert_clear(result, str(model), f"dmlrepro train --run {RUN}", "unreadable")
    assert not (run_dir(tmp_path) / "metrics.json").exists()


def test_a_truncated_metrics_file_is_named_with_the_evaluate_command(ws, tmp_path):
    pfile = variant(ws, tmp_path, trained=True)
    metrics = run_dir(tmp_path) / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])
    result = dml(ws, pfile, "table", "--table", "faults/t", "--no-mlflow")
    assert_clear(result, str(metrics), f"dmlrepro evaluate --run {RUN}", "not valid JSON")
    assert not list((tmp_path / "tables").rglob("*.*"))


# ---------------------------------------------------------------------------------------------
# Non-finite inputs


def test_nan_in_the_training_features_names_the_file_not_the_learning_rate(ws, tmp_path):
    pfile = variant(ws, tmp_path)
    feats = tmp_path / "features" / FEATURES
    set_features(feats, "train_features", (0, 3, 5), np.nan)
    result = dml(ws, pfile, "train", "--run", RUN)
    assert_clear(result, str(feats), "NaN", "dmlrepro extract --features glyphs/efficientnet_lite0")
    assert "train.lr" not in result.stderr and result.stderr.count(str(feats)) == 1
    assert not run_dir(tmp_path).joinpath("model.pt").exists()


def test_nan_in_the_test_features_names_the_file(ws, tmp_path):
    pfile = variant(ws, tmp_path, trained=True)
    (run_dir(tmp_path) / "metrics.json").unlink()
    feats = tmp_path / "features" / FEATURES
    set_features(feats, "test_features", (0, 1, 2), np.inf)
    result = dml(ws, pfile, "evaluate", "--run", RUN, "--no-mlflow")
    assert_clear(result, str(feats), "NaN or infinite", "dmlrepro extract --features glyphs/efficientnet_lite0")
    assert not (run_dir(tmp_path) / "metrics.json").exists()


def test_nan_weights_in_a_model_name_the_model_and_the_training_command(ws, tmp_path):
    import torch

    pfile = variant(ws, tmp_path, trained=True)
    (run_dir(tmp_path) / "metrics.json").unlink()
    model_file = run_dir(tmp_path) / "model.pt"
    model = torch.load(model_file, weights_only=False)
    next(iter(model["best_state"].values())).view(-1)[0] = float("nan")
    torch.save(model, model_file)
    result = dml(ws, pfile, "evaluate", "--run", RUN, "--no-mlflow")
    assert_clear(result, str(model_file), "NaN or infinite weights", f"dmlrepro train --run {RUN}")
    assert not (run_dir(tmp_path) / "metrics.json").exists()


def test_a_diverged_loss_is_reported_once(ws, tmp_path, monkeypatch, capsys):
    """A loss that becomes NaN: its own message (lower train.lr), printed once, no model."""
    from dmlrepro import cli
    from dmlrepro.training import frozen

    pfile = variant(ws, tmp_path)
    monkeypatch.chdir(ws)
    monkeypatch.setattr(frozen, "build_criterion", lambda *a, **k: nan_criterion())
    code = cli.main(["--params", str(pfile), "train", "--run", RUN])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("diverged at epoch 1") == 1 and err.count("Lower train.lr") == 1, err
    assert not run_dir(tmp_path).joinpath("model.pt").exists()


# ---------------------------------------------------------------------------------------------
# An unusual learning rate


def test_an_absurd_learning_rate_is_refused_with_its_range_unless_allowed(ws, tmp_path):
    pfile = variant(ws, tmp_path, lr=1e12)
    result = dml(ws, pfile, "train", "--run", RUN)
    assert_clear(result, "train.lr", "<= 1", "train.allow_unusual_optimizer: true")
    assert not run_dir(tmp_path).exists()
    params = yaml.safe_load(pfile.read_text())
    params["train"]["allow_unusual_optimizer"] = True
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    assert dml(ws, pfile, "validate").returncode == 0


# ---------------------------------------------------------------------------------------------
# Full and read-only disks (simulated in process)


def _main(ws, monkeypatch, capsys, pfile, *args):
    from dmlrepro import cli

    monkeypatch.chdir(ws)
    code = cli.main(["--params", str(pfile), *args])
    return code, capsys.readouterr().err


def test_too_little_free_space_is_refused_before_training(ws, tmp_path, monkeypatch, capsys):
    from dmlrepro import atomic

    pfile = variant(ws, tmp_path)
    runs = tmp_path / "runs"
    real = shutil.disk_usage

    def usage(path):
        found = real(path)
        return found._replace(free=1000) if str(path).startswith(str(runs)) else found

    monkeypatch.setattr(atomic.shutil, "disk_usage", usage)
    code, err = _main(ws, monkeypatch, capsys, pfile, "train", "--run", RUN)
    message = assert_clear(err, str(run_dir(tmp_path)), "paths.runs", "free space", code=code)
    print("FULL DISK (preflight):", message)
    assert code == 2 and not list((tmp_path / "ckpt").glob("*.pt")) and not (run_dir(tmp_path) / "model.pt").exists()


def _failing_save(monkeypatch, where: Path):
    """torch.save into a file under `where` fails as on a full disk."""
    import torch

    real = torch.save

    def save(obj, f, *args, **kwargs):
        if str(getattr(f, "name", f)).startswith(str(where)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_for_the_model_is_a_clear_error_with_no_output(ws, tmp_path, monkeypatch, capsys):
    pfile = variant(ws, tmp_path)
    _failing_save(monkeypatch, tmp_path / "runs")
    code, err = _main(ws, monkeypatch, capsys, pfile, "train", "--run", RUN)
    message = assert_clear(err, str(run_dir(tmp_path) / "model.pt"), "no space left", code=code)
    print("FULL DISK (model):", message)
    assert code == 2 and not [p for p in run_dir(tmp_path).iterdir()]  # no model.pt, history.json, temporaries
    (run,) = training_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FAILED" and "no space left" in run.data.tags["failure"]


def test_a_full_disk_for_checkpoints_is_a_warning_and_training_goes_on(ws, tmp_path, monkeypatch, capsys):
    pfile = variant(ws, tmp_path)
    _failing_save(monkeypatch, tmp_path / "ckpt")
    code, err = _main(ws, monkeypatch, capsys, pfile, "train", "--run", RUN)
    assert code == 0 and "Traceback" not in err, err
    warning = next(line for line in err.splitlines() if line.startswith("warning: cannot write"))
    print("FULL DISK (checkpoint):", warning)
    assert "No space left" in warning and "training goes on" in warning and "paths.checkpoints" in warning
    assert err.count("warning: cannot write") == 1  # once, not every epoch
    assert (run_dir(tmp_path) / "model.pt").is_file() and not list((tmp_path / "ckpt").glob("*"))


def test_a_read_only_runs_folder_is_refused_before_training(ws, tmp_path, monkeypatch, capsys):
    import tempfile

    pfile = variant(ws, tmp_path)
    runs = tmp_path / "runs"
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(runs)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    code, err = _main(ws, monkeypatch, capsys, pfile, "train", "--run", RUN)
    assert_clear(err, str(run_dir(tmp_path)), "not writable", "paths.runs", code=code)
    assert code == 2 and "epoch 1/" not in err and not list((tmp_path / "ckpt").glob("*"))


# ---------------------------------------------------------------------------------------------
# The MLflow store


def test_a_corrupt_store_is_named_with_how_to_move_it_aside(ws, tmp_path):
    pfile = variant(ws, tmp_path)
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a database at all" * 100)
    result = dml(ws, pfile, "train", "--run", RUN)
    assert_clear(result, str(db), f"mv {db} {db}.corrupt", "dmlrepro mlflow-init")
    assert not (run_dir(tmp_path) / "model.pt").exists()


def test_a_store_whose_folder_cannot_exist_names_the_setting(ws, tmp_path):
    pfile = variant(ws, tmp_path)
    (tmp_path / "a-file").write_text("")
    params = yaml.safe_load(pfile.read_text())
    params["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'a-file/store/mlflow.db'}"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    result = dml(ws, pfile, "train", "--run", RUN)
    assert_clear(result, str(tmp_path / "a-file/store"), "mlflow.tracking_uri")
    assert not (run_dir(tmp_path) / "model.pt").exists()


HOLDER = """
import fcntl, os, signal, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: a stopped writer\\n".encode())
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)  # as Ctrl-Z does
"""


def test_a_stopped_lock_holder_is_named_and_the_wait_is_bounded(ws, tmp_path):
    pfile = variant(ws, tmp_path, mlflow={"lock_wait_seconds": 3})
    lock = tmp_path / "mlflow.db.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.time()
        result = dml(ws, pfile, "train", "--run", RUN)
        message = assert_clear(result, str(lock), f"pid {holder.pid}", f"kill -CONT {holder.pid}",
                               "mlflow.lock_wait_seconds")
        print("LOCK:", message)
        assert time.time() - started < 120 and not (run_dir(tmp_path) / "model.pt").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_wait_says_whom_it_waits_for_every_interval(tmp_path, monkeypatch, capsys):
    from dmlrepro.errors import DmlReproError
    from dmlrepro.reporting import store

    monkeypatch.setattr(store, "REPORT_EVERY", 0.3)
    lock = tmp_path / "mlflow.db.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"pid 4242 on elsewhere: dmlrepro train --run x\n")
    try:
        with pytest.raises(DmlReproError, match="pid 4242"):
            with store.store_lock(f"sqlite:///{tmp_path / 'mlflow.db'}", wait=1.0):
                pass
    finally:
        os.close(fd)
    waiting = [line for line in capsys.readouterr().err.splitlines() if line.startswith("waiting for")]
    assert len(waiting) >= 2 and all("held by pid 4242" in line for line in waiting), waiting
    print("LOCK (waiting):", waiting[0])


def _hold_sqlite(db: Path, seconds: float) -> threading.Thread:
    """Another sqlite client holding the store's write lock (BEGIN EXCLUSIVE) for `seconds`."""
    ready = threading.Event()

    def hold():
        con = sqlite3.connect(db, timeout=0, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        ready.set()
        time.sleep(seconds)
        con.execute("COMMIT")
        con.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


def test_a_busy_sqlite_store_is_retried_then_named(ws, tmp_path):
    pfile = variant(ws, tmp_path, mlflow={"lock_wait_seconds": 2})
    holder = _hold_sqlite(tmp_path / "mlflow.db", 25)
    result = dml(ws, pfile, "train", "--run", RUN)
    message = assert_clear(result, str(tmp_path / "mlflow.db"), "another sqlite client", "mlflow.lock_wait_seconds")
    print("BUSY STORE:", message)
    assert not (run_dir(tmp_path) / "model.pt").exists()
    holder.join()


def test_a_store_busy_for_a_while_is_waited_for(ws, tmp_path):
    pfile = variant(ws, tmp_path, mlflow={"lock_wait_seconds": 120})
    holder = _hold_sqlite(tmp_path / "mlflow.db", 12)  # beyond sqlite's own 5 s busy timeout
    result = dml(ws, pfile, "train", "--run", RUN)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    holder.join()
    (finished,) = training_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert finished.info.status == "FINISHED"


# ---------------------------------------------------------------------------------------------
# A job killed by SIGKILL


def test_a_sigkilled_job_leaves_one_run_finished_by_its_rerun(ws, tmp_path):
    """SIGKILL before the first checkpoint (the OOM killer): the rerun finds the RUNNING run whose
    process is gone, marks the attempt KILLED and finishes the same run."""
    pfile = variant(ws, tmp_path, epochs=2, iterations_per_epoch=400, lr_milestones=[1])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = ["dmlrepro", "--params", str(pfile), "train", "--run", RUN]
    job = subprocess.Popen(cmd, cwd=ws, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and job.poll() is None and not [
                r for r in training_runs(uri) if r.info.status == "RUNNING"]:
            time.sleep(0.1)
        assert job.poll() is None, "the job ended before it could be killed; make its epochs slower"
        assert not list((tmp_path / "ckpt").glob("*.pt")), "the first checkpoint is already written"
        job.send_signal(signal.SIGKILL)
        job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == -signal.SIGKILL
    (orphan,) = training_runs(uri)
    assert orphan.info.status == "RUNNING" and orphan.data.tags["pid"] == str(job.pid)
    rerun = run(cmd, ws)
    assert "is gone: marked KILLED" in rerun.stderr
    (finished,) = [r for r in training_runs(uri) if r.info.run_name == RUN]
    tags = finished.data.tags
    assert finished.info.run_id == orphan.info.run_id and finished.info.status == "FINISHED"
    assert tags["attempts"] == "2" and tags["attempt_1"].startswith("KILLED: found RUNNING with its process gone")
    assert tags["attempt_2"] == "FINISHED" and "failure" not in tags and tags["pid"] != str(job.pid)
    history = json.loads((run_dir(tmp_path) / "history.json").read_text())
    assert history["mlflow_run_id"] == finished.info.run_id


# ---------------------------------------------------------------------------------------------
# dvc repro on an invalid study


def test_prepare_validates_the_whole_study_before_any_work(ws, tmp_path):
    """`dvc repro` runs the prepare stages first: an invalid declaration stops them before any work."""
    pfile = variant(ws, tmp_path)
    params = yaml.safe_load(pfile.read_text())
    params["paths"].update({"data": str(tmp_path / "data"), "papers": str(tmp_path / "papers")})
    params["tables"] = ["broken/t"]
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers/broken.yaml").write_text(PAPER.replace("faults", "broken").replace("method: contrastive",
                                                                                          "method: no_such_method"))
    result = dml(ws, pfile, "prepare", "--dataset", "glyphs")
    assert_clear(result, "no_such_method")
    assert not (tmp_path / "data").exists()
