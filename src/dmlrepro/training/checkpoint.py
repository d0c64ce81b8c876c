"""A run's resume state: written after every epoch outside the declared outputs, so a killed job
resumes where it stopped and ends with the same metrics."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from .. import atomic
from ..errors import DmlReproError
from ..readers import read_torch

VERSION = 3

_UNWRITABLE: set = set()


def save_checkpoint(path: Path, state: dict) -> bool:
    """Write the resume state; a failed write (full disk, read-only folder) is a warning (once per
    file), not the end of the training: only the ability to resume is lost. Returns whether it was written."""
    try:
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a Python file: a failure is an OSError
            torch.save({"version": VERSION, **state}, fh)
    except OSError as exc:
        if path not in _UNWRITABLE:
            _UNWRITABLE.add(path)
            print(f"warning: cannot write the checkpoint {path} ({exc.strerror or exc}); training goes on, but a "
                  f"killed job would start this run over: free space in {path.parent} (or make it writable), or "
                  f"point params.yaml's paths.checkpoints elsewhere", file=sys.stderr)
        return False
    return True


def load_checkpoint(path: Path, cfg_hash: str) -> dict | None:
    """The resume state of this configuration at `path`, or None (none, another configuration or version)."""
    if not path.exists():
        return None
    try:
        state = read_torch(path, "checkpoint", "dmlrepro train (it starts the run over)")
    except DmlReproError as exc:  # a torn file cannot happen (atomic writes), but be explicit if it does
        print(f"warning: ignoring it: {exc}", file=sys.stderr)
        return None
    if not isinstance(state, dict) or state.get("config_hash") != cfg_hash or state.get("version") != VERSION:
        return None
    return state


def resume(path: Path, run_id: str, cfg_hash: str, objects: dict, announce: bool = True) -> dict | None:
    """Load the run's checkpoint into `objects` ({checkpoint key: module, optimizer, scheduler...});
    returns the checkpoint, or None when there is none of this configuration."""
    state = load_checkpoint(path, cfg_hash)
    if state is not None:
        for key, obj in objects.items():
            obj.load_state_dict(state[key])
        if announce:
            print(f"resuming {run_id} from epoch {state['epoch'] + 1} ({path})", file=sys.stderr)
    return state
