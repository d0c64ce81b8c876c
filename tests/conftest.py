"""Shared fixtures: a tiny, self-contained copy of the workflow on a Latin-letter glyphs fixture.

No CJK fonts are needed: the DejaVu family every machine here has gives a handful of real
designs, and the glyphs loader is script-agnostic.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
FIXTURE_FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
                 "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSans-Oblique.ttf",
                 "DejaVuSerif-Italic.ttf"]
FIXTURE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghijnqrt"


def fixture_fonts() -> list[str]:
    fonts = [str(DEJAVU / f) for f in FIXTURE_FONTS if (DEJAVU / f).exists()]
    if len(fonts) < 4:
        pytest.skip("the DejaVu fonts (Debian package fonts-dejavu-core) are needed for the glyphs fixture")
    return fonts


def tiny_params(methods=None, seeds=(0, 1)) -> dict:
    """params.yaml of the repository, shrunk to a seconds-long run (by default with all its methods:
    the repository's declarations use them, so they load in a workspace)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    glyphs = {"kind": "glyphs", "fonts": fixture_fonts(), "characters": FIXTURE_CHARS, "image_size": 40,
              "val_fraction": 0.25, "max_classes": None, "min_designs": 4, "duplicate_threshold": 0.98}
    # the stand-ins keep their shape settings (test split, views, Recall@K) on the fixture's letters
    shape_keys = ("test_split", "views_per_design", "ks")
    params["datasets"] = {"glyphs": glyphs, **{
        name: {**glyphs, **{k: v for k, v in entry.items() if k in shape_keys},
               **({"test_classes": 6} if entry.get("test_classes") else {})}
        for name, entry in params["datasets"].items() if name != "glyphs" and entry.get("kind") == "glyphs"},
        # the real benchmarks stay as they are (no root: their columns use the stand-ins)
        **{name: entry for name, entry in params["datasets"].items() if entry.get("kind") != "glyphs"}}
    params["extract"].update({"batch_size": 32, "train_views": 1, "threads": 1})
    params["train"].update({"epochs": 2, "iterations_per_epoch": 3, "batch_size": 16, "m_per_class": 4,
                            "lr_milestones": [1], "threads": 1})
    params["seeds"] = list(seeds)
    params["tables"] = [t for t in params["tables"] if t.startswith("baselines/")]  # methods' tables: own tests
    params["methods"] = {m: params["methods"][m] for m in methods or params["methods"]}
    # a method's and a dataset's own schedule are shrunk too; a method's own lr stays
    own_per_dataset = [b for m in params["methods"].values() for b in (m.get("train_per_dataset") or {}).values()]
    for train in [m.get("train", {}) for m in params["methods"].values()] + list(params["train_per_dataset"].values()) \
            + own_per_dataset:
        for key in ("epochs", "lr_milestones", "iterations_per_epoch", "batch_size", "m_per_class", "threads"):
            train.pop(key, None)
    return params


def cli_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # dmlrepro, snakemake, dvc
    env.setdefault("GIT_AUTHOR_NAME", "dmlrepro-tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "dmlrepro-tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@example.invalid")
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cmd, cwd, check=True, env=None, timeout=900):
    result = subprocess.run(cmd, cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def make_workspace(path: Path, params: dict, extra_files: dict | None = None, papers: dict | None = None) -> Path:
    """Copy the workflow into `path` as a fresh git + DVC repository with the given params.

    papers: {name: yaml text} replaces the repository's paper declarations."""
    shutil.copy(REPO / "Snakefile", path / "Snakefile")
    shutil.copytree(REPO / "workflow", path / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    # dvc.yaml's deps name the package sources: give the workspace the same tree
    shutil.copytree(REPO / "src", path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / ".gitignore", path / ".gitignore")
    if papers is not None:
        shutil.rmtree(path / "workflow/papers")
        (path / "workflow/papers").mkdir()
        for name, text in papers.items():
            (path / "workflow/papers" / f"{name}.yaml").write_text(text)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, text in (extra_files or {}).items():
        (path / name).write_text(text)
    run(["dmlrepro", "dvc-yaml"], path)  # the workspace's own study
    run(["git", "init", "-q"], path)
    run(["dvc", "init", "-q"], path)
    run(["dvc", "config", "core.analytics", "false"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "workspace"], path)
    return path


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op thread: fast, and immune to a busy second core (OpenMP spin-waits)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path, tiny_params())



def nan_criterion():
    """A criterion whose loss is NaN from the first step (for the divergence paths)."""
    import torch

    class Nan(torch.nn.Module):
        def forward(self, z, labels):
            return z.sum() * float("nan")

        def param_groups(self, lr):
            return []

        def start_epoch(self, epoch, epochs, train_embeddings):
            pass

        def clip_gradients(self, parameters):
            pass

    return Nan()
