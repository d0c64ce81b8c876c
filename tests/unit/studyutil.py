"""Helpers for the study / reporting unit tests: a tiny params dict whose every path lies in a
temporary folder, a paper declaration written there, and fake metrics.json files for runs."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from conftest import tiny_params


def study_params(tmp_path: Path, datasets=("glyphs",), seeds=(0, 1)) -> dict:
    """tiny_params() with all paths under tmp_path, nothing selected, and the given datasets
    (extra datasets are copies of the glyphs fixture: never built, only named)."""
    params = tiny_params(seeds=seeds)
    glyphs = params["datasets"]["glyphs"]
    params["datasets"] = {name: copy.deepcopy(glyphs) for name in datasets}
    params["paths"] = {key: str(tmp_path / key) for key in params["paths"]}
    params["tables"], params["figures"] = [], []
    (tmp_path / "papers").mkdir(exist_ok=True)
    return params


def write_paper(params: dict, text: str, paper: str = "demo") -> Path:
    path = Path(params["paths"]["papers"]) / f"{paper}.yaml"
    path.write_text(f"paper: {paper}\ntitle: {paper.title()}\n" + text)
    return path


def write_metrics(params: dict, run, test=None, val=None, test_paper=None, test_last_epoch=None,
                  config_hash=None, best_epoch=2) -> Path:
    """A metrics.json as `dmlrepro evaluate` writes it, for `run` (its hash unless told)."""
    folder = run.dir(params)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"config_hash": run.hash if config_hash is None else config_hash, "best_epoch": best_epoch}
    for key, block in (("test", test), ("val", val), ("test_paper", test_paper),
                       ("test_last_epoch", test_last_epoch)):
        if block is not None:
            metrics[key] = block
    path = folder / "metrics.json"
    path.write_text(json.dumps(metrics))
    return path
