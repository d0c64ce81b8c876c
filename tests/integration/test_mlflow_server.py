"""The cluster's MLflow record: PostgreSQL (the Debian package's binaries, a server of our own on
loopback) behind `mlflow server` (started by workflow/scripts/mlflow_server.sh), a tiny study run
by real `snakemake --cores 2` with mlflow.tracking_uri = the server, and every run read back."""
from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO, cli_env, make_workspace, run, tiny_params
from test_mlflow_live import PAPER, RUNS, TRAINING

pytestmark = pytest.mark.integration
PG_TOOLS = ("initdb", "pg_ctl", "createdb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries: on PATH, else Debian's /usr/lib/postgresql/<ver>/bin."""
    found = shutil.which("pg_ctl")
    if found and all(shutil.which(t) for t in PG_TOOLS):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(re.sub(r"\D", "", p) or 0))
    usable = [Path(p) for p in versions if all((Path(p) / t).exists() for t in PG_TOOLS)]
    return usable[-1] if usable else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of our own on a free loopback port with an empty database `mlflow`;
    yields its URI. As root the server runs as the user `postgres` (or `nobody`): initdb refuses root."""
    pytest.importorskip("psycopg2", reason="psycopg2 is needed for MLflow's PostgreSQL store: pip install -e '.[server]'")
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl; Debian package postgresql) are not installed "
                    "and not on PATH; .ci/run installs them where apt-get works")
    as_user: list[str] = []
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                user = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        else:
            pytest.skip("running as root, and neither the user postgres nor nobody exists to run PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser (util-linux) to start PostgreSQL as another user")
        as_user = ["runuser", "-u", user.pw_name, "--"]
    # a folder outside pytest's tmp_path, which other users cannot enter
    base = Path(tempfile.mkdtemp(prefix="dmlrepro-pg-"))
    if as_user:
        os.chown(base, user.pw_uid, user.pw_gid)
    data, port = base / "data", free_port()

    def pg(*cmd, check=True):
        result = subprocess.run([*as_user, *map(str, cmd)], cwd=base, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c full_page_writes=off"
    try:
        pg(bindir / "initdb", "-D", data, "-U", "mlflow", "--auth=trust", "--encoding=UTF8", "--no-sync")
        pg(bindir / "pg_ctl", "-D", data, "-l", base / "postgres.log", "-o", options, "-w", "-t", "60", "start")
        pg(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "mlflow", "mlflow")
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():
            pg(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`mlflow server` on the PostgreSQL store, started by the repository's script; yields
    (tracking URI, artifacts folder)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port, artifacts = free_port(), folder / "artifacts"
    env = {**cli_env(), "MLFLOW_BACKEND_STORE_URI": postgres, "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
           "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "2"}
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(["bash", str(REPO / "workflow/scripts/mlflow_server.sh")], cwd=folder, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90  # the first start creates MLflow's tables in PostgreSQL
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlflow server did not come up:\n{(folder / 'server.log').read_text()[-4000:]}")
            time.sleep(0.5)
        yield uri, artifacts
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group we started
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def built(server, tmp_path_factory):
    """The tiny study (2 methods x 2 seeds, 1 table) built by `snakemake --cores 2` against the server."""
    uri, _ = server
    params = tiny_params(methods=("contrastive", "triplet"), seeds=(0, 1))
    params["tables"], params["figures"] = ["live/t"], []
    params["mlflow"]["tracking_uri"] = uri
    ws = make_workspace(tmp_path_factory.mktemp("cluster-study"), params, papers={"live": PAPER})
    run(["snakemake", "--cores", "2"], ws)
    return ws, uri


def client_of(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_every_training_run_is_on_the_server_with_its_epochs_and_model(built, server, postgres):
    ws, uri = built
    client = client_of(uri)
    exp = client.get_experiment_by_name(TRAINING)
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # the server's default, not a local path
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(RUNS)  # one each: nothing lost or duplicated
    for record in runs:
        run_id = record.info.run_id
        assert record.info.status == "FINISHED" and record.info.end_time >= record.info.start_time
        for key in ("val_recall_at_1", "train_loss", "lr"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key
        assert "final_test_recall_at_1" in record.data.metrics and record.data.tags["metrics_sha256"]
        assert {a.path for a in client.list_artifacts(run_id)} == {"model.pt", "history.json", "metrics.json"}
        history = json.loads((ws / "results/runs" / record.info.run_name / "history.json").read_text())
        assert history["mlflow_run_id"] == run_id
        # the model was uploaded through the server into its --artifacts-destination, byte for byte
        local = client.download_artifacts(run_id, "model.pt", str(ws / "downloaded" / run_id))
        assert Path(local).read_bytes() == (ws / "results/runs" / record.info.run_name / "model.pt").read_bytes()
    _, artifacts = server
    assert len(list(artifacts.rglob("model.pt"))) == len(RUNS)
    assert not (ws / "mlartifacts").exists() and not (ws / "mlruns").exists()
    # and the record is PostgreSQL's: 4 training runs + 4 table entries
    import psycopg2

    with psycopg2.connect(postgres) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE lifecycle_stage = 'active'")
        assert cur.fetchone()[0] == 2 * len(RUNS)


def test_table_entries_link_their_training_runs(built):
    ws, uri = built
    client = client_of(uri)
    training = {r.info.run_name: r.info.run_id
                for r in client.search_runs([client.get_experiment_by_name(TRAINING).experiment_id])}
    exp = client.get_experiment_by_name("live/t")
    entries = {r.data.tags["run"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(entries) == sorted(RUNS)
    for run_id, entry in entries.items():
        assert entry.info.status == "FINISHED"
        assert entry.data.tags["training_run_id"] == training[run_id]
        assert training[run_id] in entry.data.tags["mlflow.note.content"]
        assert "final_test_recall_at_1" in entry.data.metrics
    assert "0 entries" in run(["dmlrepro", "table", "--table", "live/t"], ws).stdout  # unchanged: nothing written
    run(["dmlrepro", "mlflow-init"], ws)  # the server answers: the check passes


def test_jobs_creating_one_experiment_at_once_share_it(server):
    """No file lock guards a server store: parallel jobs that find no experiment and create it
    end up with the one that won."""
    from dmlrepro.reporting.experiments import experiment

    uri, _ = server
    barrier, ids, errors = threading.Barrier(4), [], []

    def create():
        client = client_of(uri)
        barrier.wait()
        try:
            ids.append(experiment(client, "training-runs/race", None, {"dataset": "race"}))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(ids) == 4 and len(set(ids)) == 1


def test_mlflow_init_names_a_server_that_does_not_answer(tmp_path):
    """No PostgreSQL needed: a tracking URI nobody serves fails at once (not after MLflow's minutes
    of retries), naming the URI; a server URI keeps the server's artifact root."""
    from dmlrepro.reporting.store import artifact_root

    uri = f"http://127.0.0.1:{free_port()}"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"]["tracking_uri"] = uri
    assert artifact_root(params) is None  # `mlartifacts` is a path: the server decides
    params["mlflow"]["artifact_root"] = "s3://bucket/dmlrepro"
    assert artifact_root(params) == "s3://bucket/dmlrepro"
    params["mlflow"]["artifact_root"] = "mlartifacts"
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.time()
    result = run(["dmlrepro", "--params", str(pfile), "mlflow-init"], REPO, check=False)
    assert result.returncode == 2 and time.time() - started < 30
    assert f"the MLflow tracking server {uri} does not answer" in result.stderr
    assert "Traceback" not in result.stderr
