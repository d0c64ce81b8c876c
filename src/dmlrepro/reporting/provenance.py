"""From a table cell to the exact model file: the DVC hash of a trained model.

DVC 3 identifies a cached file by the md5 of its bytes (``hash: md5`` in dvc.lock; no line-ending
normalisation, unlike DVC 2's text files), so the hash can be computed the moment `dmlrepro train`
writes model.pt, before DVC has seen the file. :class:`~.training_record.TrainingTracker` tags every
finished training run with :func:`model_tags`: ``model_md5`` (as dvc.lock will record it) and
``model_path``. A cell of a table names its run (the ``run`` column of the .csv); the run's MLflow
training run carries ``git_commit`` and ``model_md5``, and ``git log -S <model_md5> -- dvc.lock``
lists the commits whose dvc.lock records that very file (`git checkout <commit> && make pull`
brings it back).
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..hashing import file_digest


def dvc_md5(path: str | os.PathLike) -> str:
    """The hash DVC 3 records for a file: the plain md5 of its bytes."""
    return file_digest(path, "md5")


def model_tags(model: str | os.PathLike) -> dict[str, str]:
    """MLflow tags tying a training run to its model file: {} when the file does not exist."""
    model = Path(model)
    if not model.is_file():
        return {}
    try:
        shown = model.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = model
    return {"model_md5": dvc_md5(model), "model_path": shown.as_posix()}


def lock_hashes(lock: str | os.PathLike = "dvc.lock") -> dict[str, str]:
    """{output path: md5} of every output a dvc.lock records (a directory's md5 ends in .dir)."""
    stages = (yaml.safe_load(Path(lock).read_text("utf-8")) or {}).get("stages", {})
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", []) if "md5" in out}
