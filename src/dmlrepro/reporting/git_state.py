"""The source state recorded on every MLflow entry: the git commit and whether the tree was dirty.

The tags ``git_commit`` (also written as ``mlflow.source.git.commit``) and ``git_dirty`` say which
code produced a training run or a table entry. The pipeline's small outputs (metrics, histories,
tables under results/) are committed to git, so a build writing them does not make the tree
dirty: only changes outside results/ count. Read once per process.
"""
from __future__ import annotations

import functools
import subprocess

# The pipeline's small outputs are committed to git (metrics, histories, tables; see .gitignore): a
# build writing them does not make the tree dirty.
_OUTPUTS_IN_GIT = ("results",)


@functools.lru_cache(maxsize=None)
def git_state(cwd: str | None = None) -> dict:
    """{'git_commit': sha or 'unknown', 'git_dirty': 'true' | 'false' | 'unknown'} (outputs under
    results/ do not count as dirty)."""
    def git(*args):
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, cwd=cwd)
        return out.stdout if out.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--", ":/", *(f":(top,exclude){p}" for p in _OUTPUTS_IN_GIT))
    except (OSError, subprocess.TimeoutExpired):
        commit = status = None
    return {"git_commit": commit.strip() if commit else "unknown",
            "git_dirty": "unknown" if status is None else str(bool(status.strip())).lower()}
