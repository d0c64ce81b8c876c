"""The declarations both engines read: dvc.yaml checked in, snakemake's lint, bad params caught
before anything runs, and a build outside the selected tables."""
from __future__ import annotations

import pytest
import yaml

from conftest import REPO, make_workspace, run, tiny_params

pytestmark = pytest.mark.integration


def test_checked_in_dvc_yaml_matches_the_declarations():
    result = run(["dmlrepro", "dvc-yaml", "--check"], REPO, check=False)
    assert result.returncode == 0, result.stderr


def test_snakemake_lint_is_clean(workspace):
    lint = run(["snakemake", "--lint"], workspace, check=False)
    assert lint.returncode == 0 and "good condition" in lint.stdout + lint.stderr, lint.stdout


def test_bad_params_fail_fast_naming_the_key(workspace):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["lrr"] = 0.1
    params["train"]["lr"] = -1
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    smk = run(["snakemake", "--cores", "1", "-n"], workspace, check=False)
    assert smk.returncode != 0 and "train.lrr" in smk.stderr + smk.stdout
    cli = run(["dmlrepro", "prepare", "--dataset", "glyphs"], workspace, check=False)
    assert cli.returncode == 2 and "train.lrr" in cli.stderr and "train.lr: -1" in cli.stderr
    assert not (workspace / "data").exists()


def test_dvc_commit_of_a_build_outside_the_selected_tables_is_a_note_not_an_error(tmp_path):
    """`snakemake <a table params.yaml does not select>` ends in onsuccess's `dmlrepro dvc-commit`
    with nothing of dvc.yaml built: that build is simply not versioned, and says so."""
    ws = make_workspace(tmp_path, tiny_params())
    result = run(["dmlrepro", "dvc-commit"], ws)
    assert "nothing dvc.yaml versions is built yet" in result.stdout
    assert not (ws / "dvc.lock").exists()
