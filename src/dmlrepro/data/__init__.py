"""Datasets: each kind is a registered ``prepare`` function writing ``<out_dir>/manifest.csv``.

A new kind is one decorated function::

    @DATASETS.register("cub")
    def prepare_cub(cfg: dict, out_dir: Path) -> dict: ...

It receives the dataset's section of params.yaml (``datasets.<name>``, with ``kind``) and writes
the manifest described in :mod:`dmlrepro.data.manifest`, atomically, plus anything it needs
(images, info.json) under ``out_dir``; it returns a JSON-able summary.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DmlReproError
from ..registry import Registry

#: Metadata every dataset kind declares: its evaluation protocol (leave_one_out: every test image
#: queries the rest; query_gallery: a query set against a gallery), the manifest splits it writes,
#: and the JSON schema of its settings (a fragment of params.schema.json, generated from here).
DATASETS = Registry("dataset kind", ("protocol", "splits", "schema"))


def prepare_dataset(name: str, cfg: dict, out_dir: str | os.PathLike) -> dict:
    """Prepare dataset ``name`` (its params.yaml section ``cfg``) into ``out_dir``."""
    if not isinstance(cfg, dict) or "kind" not in cfg:
        raise DmlReproError(
            f"datasets.{name} in params.yaml needs a `kind` (one of: {', '.join(DATASETS.names())})"
        )
    prepare = DATASETS.get(cfg["kind"])
    return prepare(cfg, Path(out_dir))


# Import the kinds so they register (after DATASETS exists: they import it from here).
from . import glyphs, cub200, cars196, sop, inshop, vehicleid  # noqa: E402,F401
