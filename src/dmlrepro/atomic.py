"""Atomic file writes: write to a temporary sibling, then rename.

A killed job therefore never leaves a half-written output that Snakemake or DVC could
mistake for a finished one. A write that fails (a full disk, a read-only folder) raises a
DmlReproError naming the file, the reason and the free space, and leaves the target untouched.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import DmlReproError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`.

    Works for files and directories. On error the temporary is removed and `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # the caller creates a file or a directory here
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space of the file system holding `folder` (its nearest existing ancestor)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def write_error(path: str | os.PathLike, exc: OSError) -> DmlReproError:
    """A DmlReproError for a failed write of `path`: what happened and how to fix it."""
    folder = Path(path).parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(folder)
        return DmlReproError(f"cannot write {path}: no space left on the disk holding {folder}"
                             f"{f' ({human(free)} free)' if free is not None else ''}; free space there (or move "
                             f"that folder: params.yaml's paths:) and rerun; nothing was half-written")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DmlReproError(f"cannot write {path}: {folder} is not writable ({exc.strerror}); make it writable "
                             f"(or point params.yaml's paths: elsewhere) and rerun")
    return DmlReproError(f"cannot write {path}: {exc.strerror or exc}; nothing was half-written")


@contextlib.contextmanager
def checked_write(path: str | os.PathLike) -> Iterator[Path]:
    """atomic_path, with an OSError turned into a DmlReproError naming `path` (see write_error)."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as exc:
        raise write_error(path, exc) from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with checked_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save through a Python file, so that a failed write is an OSError (ENOSPC ...) and not
    the C++ stream's `basic_ios::clear` or `unexpected pos`."""
    import torch

    with checked_write(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
