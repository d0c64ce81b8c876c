"""The checked readers, the store's faults and the push's cache check, in process (issue 24; the
CLI cases are tests/integration/test_faults.py)."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess

import numpy as np
import pytest
import torch
import yaml

from dmlrepro import atomic, readers, sharing
from dmlrepro.errors import DmlReproError
from dmlrepro.reporting import store


def test_a_truncated_json_file_names_the_file_and_the_rebuilding_command(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"config_hash": "abc", "test": {"recall@1"')
    with pytest.raises(DmlReproError) as err:
        readers.read_json(path, "metrics file", "dmlrepro evaluate --run R")
    assert str(path) in str(err.value) and "`dmlrepro evaluate --run R`" in str(err.value)
    assert "not valid JSON" in str(err.value)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DmlReproError, match="not UTF-8"):
        readers.read_json(path, "metrics file", "dmlrepro evaluate --run R")


@pytest.mark.parametrize("content", [b"garbage" * 20, b"", None])
def test_an_unreadable_torch_file_names_the_file(tmp_path, content):
    path = tmp_path / "model.pt"
    torch.save({"a": torch.ones(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content is None else content)
    with pytest.raises(DmlReproError) as err:
        readers.read_torch(path, "trained model", "dmlrepro train --run R")
    assert str(path) in str(err.value) and "unreadable" in str(err.value) and "dmlrepro train --run R" in str(err.value)


def test_non_finite_weights_and_arrays_are_found():
    model = {"best_state": {"w": torch.ones(3)}, "last_state": {"w": torch.tensor([1.0, float("inf")])}}
    assert readers.non_finite_tensors(model) == ["last_state.w."]
    with pytest.raises(DmlReproError, match="last_state.w"):
        readers.check_finite_weights(model, "model.pt", "dmlrepro train --run R")
    array = np.zeros((2, 5, 3), np.float16)
    assert readers.first_non_finite(array) is None
    array[1, 2, 0] = np.nan
    assert readers.first_non_finite(array, chunk=4) == np.ravel_multi_index((1, 2, 0), array.shape)


def test_a_failed_output_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out" / "model.pt"
    real = torch.save

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DmlReproError, match="no space left on the disk holding") as err:
        atomic.write_torch(target, {"a": 1})
    assert str(target) in str(err.value)
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(torch, "save", real)


def test_a_store_that_is_not_sqlite_is_named_with_how_to_move_it_aside(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"PK\x03\x04 a zip, not a database")
    with pytest.raises(store.StoreError) as err:
        with store.store_lock(f"sqlite:///{db}", wait=1):
            pass
    assert f"mv {db} {db}.corrupt" in str(err.value) and "dmlrepro mlflow-init" in str(err.value)
    db.write_bytes(b"")  # an empty file is a store not created yet
    with store.store_lock(f"sqlite:///{db}", wait=1):
        assert (tmp_path / "mlflow.db.lock").read_text().startswith(f"pid {os.getpid()} on ")


def test_whether_a_process_is_gone():
    host = socket.gethostname()
    child = subprocess.Popen(["true"])
    child.wait()
    assert store.process_gone(str(child.pid), host)
    assert not store.process_gone(str(os.getpid()), host)
    assert not store.process_gone(str(child.pid), "another-host")  # undecidable elsewhere: not gone
    assert not store.process_gone(None, host)


def test_push_checks_the_cache_first_and_names_the_corrupt_object(tmp_path, monkeypatch):
    """A truncated object in the local cache: named with its file, not blamed on the workspace
    (which `dvc status` reports as changed when the workspace links to the cache)."""
    good = b"the model's bytes"
    md5 = hashlib.md5(good).hexdigest()
    cache = tmp_path / ".dvc/cache/files/md5"
    obj = cache / md5[:2] / md5[2:]
    obj.parent.mkdir(parents=True)
    obj.write_bytes(good[:5])  # truncated
    (tmp_path / "dvc.lock").write_text(f"schema: '2.0'\nstages:\n  train:\n    cmd: x\n    outs:\n"
                                       f"    - path: model.pt\n      md5: {md5}\n      size: {len(good)}\n")

    def dvc(*args, root):
        if args[:2] == ("cache", "dir"):
            return subprocess.CompletedProcess(args, 0, f"{cache.parent.parent}\n", "")
        if args[0] == "status":
            return subprocess.CompletedProcess(args, 0, json.dumps({"train": [{"changed outs": {"model.pt": "modified"}}]}), "")
        raise AssertionError(f"dvc {args} should not run")

    monkeypatch.setattr(sharing, "_dvc", dvc)
    with pytest.raises(sharing.SharingError) as err:
        sharing.push(tmp_path, log=lambda *a: None)
    assert str(obj) in str(err.value) and "corrupt" in str(err.value)
    assert "does not describe the workspace" not in str(err.value)


def test_divergence_gives_its_advice_once():
    from dmlrepro.training.loop import diverged

    why = "non-finite embeddings reached loss 'triplet' (diverged training?); try a lower train.lr or loss_lr_multiplier"
    message = str(diverged("glyphs/b/triplet/seed0", 3, 7, 0.25, why))
    assert message.lower().count("lower train.lr") == 1 and "non-finite embeddings reached loss" in message


def test_an_unreadable_checkpoint_is_a_warning_and_the_run_starts_over(tmp_path, capsys):
    from dmlrepro.training.checkpoint import load_checkpoint

    path = tmp_path / "abc-0.pt"
    path.write_bytes(b"torn")
    assert load_checkpoint(path, "abc") is None
    err = capsys.readouterr().err
    assert err.startswith("warning: ignoring it: checkpoint") and str(path) in err


def test_an_unexpected_error_keeps_its_traceback_and_says_where_to_report_it(monkeypatch, capsys):
    from dmlrepro import cli

    def broken(params, args):
        raise RuntimeError("an internal fault")

    monkeypatch.setattr(cli, "cmd_schema", broken)
    assert cli.main(["schema", "--check"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: an internal fault" in err
    assert err.rstrip().endswith("(under Snakemake it is in the job's log)") and "report it" in err


def test_dvc_commit_records_only_stages_whose_inputs_and_outputs_exist(tmp_path, monkeypatch):
    """After a partial build in a clone whose metrics came with git but whose models did not, `dvc
    commit` refuses an evaluation stage (a missing dependency) and records nothing: such a stage is
    left out, and named."""
    from dmlrepro.cli import _built_stages

    monkeypatch.chdir(tmp_path)
    for f in ("code.py", "features.npz", "metrics.json", "model.pt"):
        (tmp_path / f).write_text("x")
    stages = {
        "extract": {"deps": ["code.py"], "outs": ["features.npz"]},
        "train": {"deps": ["features.npz"], "outs": ["model.pt"]},
        "evaluate": {"deps": ["model.pt", "missing_history.json"], "metrics": [{"metrics.json": {"cache": False}}]},
        "table": {"deps": ["metrics.json"], "outs": ["table.md"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    assert _built_stages({}) == (["extract", "train"], ["evaluate"])
    (tmp_path / "table.md").write_text("x")  # every stage has its outputs, one lacks an input: named, not "all"
    assert _built_stages({}) == (["extract", "train", "table"], ["evaluate"])
    (tmp_path / "missing_history.json").write_text("x")
    assert _built_stages({}) == ([], [])  # all of them: one call without names
    (tmp_path / "missing_history.json").unlink()
    (tmp_path / "table.md").unlink()
    (tmp_path / "model.pt").unlink()
    assert _built_stages({}) == (["extract"], ["evaluate"])
    (tmp_path / "features.npz").unlink()
    assert _built_stages({}) == (None, ["evaluate"])
