"""Where each kind of artefact lives, from params.yaml's `paths:`: one function per kind, used by the
stage commands, the Snakefile and the tests, so the three never disagree."""
from __future__ import annotations

from pathlib import Path


def dataset_dir(params: dict, dataset: str) -> Path:
    return Path(params["paths"]["data"]) / dataset


def table_paths(params: dict, paper: str, table: str) -> tuple[Path, Path, Path]:
    base = Path(params["paths"]["tables"]) / paper / table
    return base.with_suffix(".md"), base.with_suffix(".csv"), base.with_suffix(".html")


def claims_paths(params: dict, paper: str) -> tuple[Path, Path, Path]:
    """A paper's claims page, results/claims/<paper>.{md,csv,html}: beside the tables' folder."""
    base = Path(params["paths"]["tables"]).parent / "claims" / paper
    return base.with_suffix(".md"), base.with_suffix(".csv"), base.with_suffix(".html")


def figure_paths(params: dict, paper: str, sweep: str) -> tuple[Path, Path]:
    base = Path(params["paths"]["figures"]) / paper / sweep
    return base.with_suffix(".png"), base.with_suffix(".csv")




def checkpoint_file(folder: Path, cfg_hash: str, test_every_epoch: bool) -> Path:
    """A run's resume state in params.yaml's paths.checkpoints, outside its declared outputs (a killed
    job resumes from it)."""
    return Path(folder) / f"{cfg_hash}-{int(test_every_epoch)}.pt"
