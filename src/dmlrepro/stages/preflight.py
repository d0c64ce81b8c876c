"""Checks before a job starts its work: its output and checkpoint folders are writable, and their
disks have room for what it will write (an estimate: features, model, checkpoint), so that a full or
read-only disk is named at once, not after hours of training.

Estimates are deliberately generous (float32 weights, every kept copy of them, Adam's two moments);
a job whose outputs already exist needs at most their size again.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..atomic import free_bytes, human
from ..backbones import BACKBONES
from ..errors import DmlReproError
from ..paths import dataset_dir

_SLACK = 1 << 20  # histories, metrics, temporary files


def check_writable(folder: Path, what: str, setting: str) -> None:
    """`folder` exists (it is created) and a file can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".dmlrepro-write-test.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise DmlReproError(f"the folder of the {what}, {folder}, is not writable ({exc.strerror or exc}); make it "
                            f"writable, or point params.yaml's {setting} at a writable folder, and rerun") from None


def check_space(folder: Path, needed: int, what: str, setting: str) -> None:
    """The disk holding `folder` has at least `needed` bytes free."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise DmlReproError(f"not enough free disk space for the {what} in {folder}: it needs about {human(needed)}, "
                            f"the disk has {human(free)} free; free space there, or point params.yaml's {setting} at "
                            f"another disk, and rerun")


def check_outputs(outputs: list[tuple[Path, int, str, str]]) -> None:
    """Every (folder, bytes needed, what, setting): writable, then the space, summed per disk."""
    per_disk: dict[int, list] = {}
    for folder, needed, what, setting in outputs:
        check_writable(folder, what, setting)
        per_disk.setdefault(os.stat(folder).st_dev, []).append((folder, needed, what, setting))
    for entries in per_disk.values():
        folder, _, _, setting = entries[0]
        check_space(folder, sum(e[1] for e in entries) + _SLACK, " and ".join(e[2] for e in entries), setting)


def _feature_dim(config: dict) -> int:
    try:
        return int(BACKBONES.metadata(config["backbone"]["name"])["feature_dim"])
    except Exception:  # noqa: BLE001 - an estimate; an unknown backbone fails later with its own message
        return 2048


def training_outputs(run, paths, test_every_epoch: bool) -> list[tuple[Path, int, str, str]]:
    """(folder, bytes, what, setting) of a training job: model.pt in the run's folder, the checkpoint."""
    if run.finetuned:  # a whole network: its size is known once built; an existing model says it
        existing = paths.out_dir / "model.pt"
        weights = existing.stat().st_size if existing.is_file() else 400 << 20
    else:
        dim = _feature_dim(run.config)
        weights = 4 * (dim * int(run.config["train"].get("embedding_dim", dim)) + dim)
    copies = 3 if test_every_epoch else 2  # best and last (and best-on-test)
    model = weights * copies
    checkpoint = weights * (copies + 3)  # the live weights, Adam's two moments, the kept copies
    return [(paths.out_dir, model, "trained model", "paths.runs"),
            (paths.checkpoints, 2 * checkpoint, "checkpoint", "paths.checkpoints")]


def features_output(params: dict, feat, views: int) -> list[tuple[Path, int, str, str]]:
    """(folder, bytes, what, setting) of an extraction job: the float16 features of every image view."""
    manifest = dataset_dir(params, feat.dataset) / "manifest.csv"
    try:
        with open(manifest, "rb") as fh:
            images = max(sum(1 for _ in fh) - 1, 0)
    except OSError:
        images = 0  # extraction names a missing manifest itself
    dim = _feature_dim(feat.config)
    return [(feat.path(params).parent, 2 * images * views * dim, "features file", "paths.features")]
