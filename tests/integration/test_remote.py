"""Sharing a study through a DVC remote, with the real tools: workspace A builds two versions of a
study (snakemake --cores 2) and pushes them (`make push`); a fresh `git clone` B pulls (`make pull`),
rebuilds the table without any training or extraction, and checks out the older version; broken
remotes and caches fail with a message naming the file and the fixing command, changing nothing."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_workspace, run, tiny_params
from dmlrepro.reporting.provenance import dvc_md5, lock_hashes
from dmlrepro.study.stages import job_counts

pytestmark = pytest.mark.integration

PAPER = """paper: share
title: A shared study
tables:
  t:
    caption: Built once, shared through a DVC remote.
    columns: [{key: r1, dataset: glyphs, metric: recall@1}, {key: map, dataset: glyphs, metric: map@r}]
    rows: [{label: Frozen, method: frozen}, {label: Contrastive, method: contrastive}]
"""
TABLE = "results/tables/share/t"
RUNS = "results/runs/glyphs/efficientnet_lite0"
MODEL = f"{RUNS}/contrastive/seed0/model.pt"
MAKE = ["make", "-o", "install"]  # the project's Makefile, with the test's interpreter instead of a new .venv



def commit(ws: Path, message: str) -> str:
    run(["git", "add", "-A"], ws)
    run(["git", "commit", "-qm", message], ws)
    return run(["git", "rev-parse", "HEAD"], ws).stdout.strip()


def table_files(ws: Path) -> dict:
    return {suffix: (ws / f"{TABLE}.{suffix}").read_bytes() for suffix in ("md", "csv", "html")}


def clone(origin: Path, path: Path, ref: str | None = None) -> Path:
    run(["git", "clone", "-q", str(origin), str(path)], origin.parent)
    if ref:
        run(["git", "checkout", "-q", ref], path)
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A: v1 built and pushed; v2 (train.lr changed: the contrastive runs retrain) built and pushed.
    The remote is the default of `make remote`, a folder beside the workspace (here: ../remote)."""
    root = tmp_path_factory.mktemp("share")
    params = tiny_params(methods=("frozen", "contrastive"), seeds=(0,))
    params["tables"], params["figures"] = ["share/t"], []
    (root / "a").mkdir()
    a = make_workspace(root / "a", params, papers={"share": PAPER})
    shutil.copy(REPO / "Makefile", a / "Makefile")
    run([*MAKE, "remote", "REMOTE=../remote"], a)
    assert "../../remote" in (a / ".dvc/config").read_text()  # relative to .dvc/: a sibling clone finds it
    commit(a, "the study's remote")

    built = run(["snakemake", "--cores", "2"], a)
    assert job_counts(built.stdout + built.stderr)["train"] == 2
    v1 = commit(a, "v1: built")
    pushed = run([*MAKE, "push"], a)
    assert "the remote holds all" in pushed.stdout
    tables = {"v1": table_files(a)}
    locks = {"v1": lock_hashes(a / "dvc.lock")}

    params["train"]["lr"] = 2e-4
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    v2_params = commit(a, "v2: train.lr 2e-4")
    built = run(["snakemake", "--cores", "2"], a)
    counts = job_counts(built.stdout + built.stderr)
    assert counts["train"] == 1 and "extract" not in counts  # contrastive; the frozen backbone has no lr
    v2 = commit(a, "v2: built")
    run([*MAKE, "push"], a)
    tables["v2"] = table_files(a)
    locks["v2"] = lock_hashes(a / "dvc.lock")
    assert tables["v1"]["csv"] != tables["v2"]["csv"] and locks["v1"][MODEL] != locks["v2"][MODEL]
    return {"root": root, "a": a, "remote": root / "remote", "v1": v1, "v2": v2, "v2_params": v2_params,
            "tables": tables, "locks": locks}


@pytest.fixture(scope="module")
def teammate(study):
    """B: a fresh clone of A, beside it, after `make pull`."""
    b = clone(study["a"], study["root"] / "b")
    pulled = run([*MAKE, "pull"], b)
    return b, pulled


def test_a_fresh_clone_pulls_and_has_nothing_to_train(study, teammate):
    b, pulled = teammate
    assert "dvc status` is clean" in pulled.stdout
    assert "Data and pipelines are up to date" in run(["dvc", "status"], b).stdout
    dry = run(["snakemake", "--cores", "2", "-n"], b)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    for path, md5 in study["locks"]["v2"].items():  # every dataset, feature and model file, as A built it
        if not md5.endswith(".dir") and (b / path).suffix in (".pt", ".npz"):
            assert dvc_md5(b / path) == md5, path
    assert (b / "data/glyphs/manifest.csv").read_bytes() == (study["a"] / "data/glyphs/manifest.csv").read_bytes()
    # the touch step recorded Snakemake's metadata for every job: a dataset setting reruns the dataset
    params = (b / "params.yaml").read_text()
    (b / "params.yaml").write_text(params.replace("image_size: 40", "image_size: 41"))
    try:
        counts = job_counts(run(["snakemake", "--cores", "2", "-n"], b).stdout)
        assert counts.get("prepare") == 1 and counts.get("extract") == 1, counts
    finally:
        (b / "params.yaml").write_text(params)


def test_the_clone_rebuilds_the_table_bit_for_bit_without_training(study, teammate):
    b, _ = teammate
    for suffix in ("md", "csv", "html"):
        (b / f"{TABLE}.{suffix}").unlink()
    rebuilt = run(["snakemake", "--cores", "2"], b)
    counts = job_counts(rebuilt.stdout + rebuilt.stderr)
    assert {k: v for k, v in counts.items() if k not in ("all", "total")} == {"table": 1}, counts
    assert table_files(b) == study["tables"]["v2"]
    run(["dmlrepro", "table", "--table", "share/t"], b)  # the command itself, too
    assert table_files(b) == study["tables"]["v2"]
    assert "nothing to commit" in run(["git", "status"], b).stdout


def test_mlflow_runs_trace_a_cell_to_the_model_file_and_its_commit(study):
    a = study["a"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{a / 'mlflow.db'}")
    exp = client.get_experiment_by_name("share/t")
    cells = {(r.data.tags["row"], r.data.tags["seed"]): r for r in client.search_runs([exp.experiment_id])}
    assert set(cells) == {("Frozen", "0"), ("Contrastive", "0")}
    assert {r["row"] for r in csv.DictReader((a / f"{TABLE}.csv").open())} == {"Frozen", "Contrastive"}
    for (row, seed), cell in cells.items():
        trained = client.get_run(cell.data.tags["training_run_id"])
        tags = trained.data.tags
        path = tags["model_path"]
        assert path == f"{RUNS}/{'frozen' if row == 'Frozen' else 'contrastive'}/seed{seed}/model.pt"
        assert tags["model_md5"] == study["locks"]["v2"][path] == dvc_md5(a / path)
        # the commit that trained it (clean: results/ are outputs), and the commit whose dvc.lock holds it
        assert tags["git_dirty"] == "false"
        assert tags["git_commit"] == (study["v2_params"] if row == "Contrastive" else
                                      run(["git", "rev-parse", f"{study['v1']}~1"], a).stdout.strip())
        recorded = run(["git", "log", "--format=%H", "-S", tags["model_md5"], "--", "dvc.lock"], a).stdout.split()
        assert recorded[-1] == (study["v2"] if row == "Contrastive" else study["v1"])


def test_an_older_commit_brings_back_its_tables_models_and_features(study, teammate):
    b, _ = teammate
    run(["git", "checkout", "-q", study["v1"]], b)
    pulled = run([*MAKE, "pull"], b)
    assert "fetched" in pulled.stdout and "Data and pipelines are up to date" in run(["dvc", "status"], b).stdout
    assert "Nothing to be done" in run(["snakemake", "--cores", "2", "-n"], b).stdout
    assert dvc_md5(b / MODEL) == study["locks"]["v1"][MODEL]
    assert table_files(b) == study["tables"]["v1"]
    run(["dmlrepro", "table", "--table", "share/t", "--no-mlflow"], b)
    assert table_files(b) == study["tables"]["v1"]
    # both versions are in B's cache now: plain `git checkout && dvc checkout` switches back
    run(["git", "checkout", "-q", study["v2"]], b)
    run(["dvc", "checkout"], b)
    assert dvc_md5(b / MODEL) == study["locks"]["v2"][MODEL]
    assert table_files(b) == study["tables"]["v2"]
    assert "Data and pipelines are up to date" in run(["dvc", "status"], b).stdout


def test_dvc_metrics_diff_compares_the_two_versions(study):
    diff = run(["dvc", "metrics", "diff", study["v1"], study["v2"]], study["a"]).stdout
    assert "contrastive/seed0/metrics.json" in diff and "recall@1" in diff


def assert_untouched(ws: Path) -> None:
    assert not (ws / "data").exists() and not list((ws / RUNS).rglob("model.pt"))


def test_a_missing_remote_names_it_and_the_fix(study, tmp_path):
    c = clone(study["a"], tmp_path / "c")
    run(["dvc", "remote", "modify", "--local", "storage", "url", str(tmp_path / "nowhere")], c)
    pulled = run(["dmlrepro", "pull"], c, check=False)
    assert pulled.returncode == 2
    assert f"{tmp_path / 'nowhere'}, which does not exist" in pulled.stderr
    assert "dvc remote modify --local storage url" in pulled.stderr and "make push" in pulled.stderr
    assert_untouched(c)
    run(["dvc", "remote", "remove", "--local", "storage"], c)
    run(["dvc", "remote", "remove", "storage"], c)
    unset = run(["dmlrepro", "pull"], c, check=False)
    assert unset.returncode == 2 and "no default DVC remote is configured" in unset.stderr
    assert "make remote" in unset.stderr
    assert_untouched(c)


def test_a_partly_pushed_or_corrupt_remote_names_the_files_and_changes_nothing(study, tmp_path):
    md5 = study["locks"]["v2"][MODEL]
    obj = Path("files/md5") / md5[:2] / md5[2:]
    partial = tmp_path / "partial"
    shutil.copytree(study["remote"], partial)
    (partial / obj).unlink()
    d = clone(study["a"], tmp_path / "d")
    run(["dvc", "remote", "modify", "--local", "storage", "url", str(partial)], d)
    pulled = run(["dmlrepro", "pull"], d, check=False)
    assert pulled.returncode == 2 and "did not provide 1 file(s)" in pulled.stderr
    assert f"{MODEL} (md5 {md5})" in pulled.stderr and "run `make push`" in pulled.stderr
    assert "Nothing was checked out" in pulled.stderr
    assert_untouched(d)

    shutil.copy(study["remote"] / obj, partial / obj)
    (partial / obj).chmod(0o644)
    with open(partial / obj, "r+b") as fh:  # flip bytes in the remote's copy
        fh.seek(100)
        fh.write(b"corrupt")
    pulled = run(["dmlrepro", "pull"], d, check=False)
    assert pulled.returncode == 2 and "corrupt" in pulled.stderr and MODEL in pulled.stderr
    assert str(partial / obj) in pulled.stderr and "make push" in pulled.stderr
    assert_untouched(d)
    assert not (d / ".dvc/cache" / obj).exists()  # the bad copy is not kept


def test_a_corrupt_local_cache_file_is_caught_and_fetched_again(study):
    e = clone(study["a"], study["root"] / "e")  # beside A: the relative remote url fits
    run(["dmlrepro", "pull"], e)
    md5 = study["locks"]["v2"][MODEL]
    cached = e / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    (e / MODEL).unlink()
    cached.chmod(0o644)
    with open(cached, "r+b") as fh:
        fh.seek(100)
        fh.write(b"corrupt")
    # plain DVC copies the corrupt object into the workspace without a word
    assert run(["dvc", "checkout"], e).returncode == 0 and dvc_md5(e / MODEL) != md5
    pulled = run(["dmlrepro", "pull"], e)
    assert f"the local cache copy of {MODEL} was corrupt" in pulled.stdout
    assert "replaced 1 workspace file(s)" in pulled.stdout  # DVC took the corrupt copy for current
    assert dvc_md5(e / MODEL) == md5 and dvc_md5(cached) == md5
    assert "Data and pipelines are up to date" in run(["dvc", "status"], e).stdout


def test_push_refuses_a_build_dvc_lock_does_not_record(study):
    f = clone(study["a"], study["root"] / "f")
    run(["dmlrepro", "pull"], f)
    params = yaml.safe_load((f / "params.yaml").read_text())
    params["train"]["lr"] = 5e-4
    (f / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pushed = run(["dmlrepro", "push"], f, check=False)
    assert pushed.returncode == 2 and "dvc.lock does not describe the workspace" in pushed.stderr
    assert "train-glyphs-efficientnet_lite0-contrastive-seed0" in pushed.stderr
