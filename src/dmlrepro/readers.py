"""Checked reads of the files the pipeline writes and reads back (model.pt, checkpoints,
metrics.json, history.json; features files in :mod:`.backbones.extract`, manifests in
:mod:`.data.manifest`).

A missing, truncated or corrupt file, or one holding NaN or infinite numbers, becomes a
DmlReproError that names the file, says what is wrong and gives the command that rebuilds it (the
job that writes it), never a traceback from the parser.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DmlReproError


def _unreadable(path: Path, what: str, why: str, rebuild: str) -> DmlReproError:
    return DmlReproError(f"{what} {path} is unreadable ({why}): truncated or corrupt, e.g. by a full disk or an "
                         f"interrupted copy; delete it and rebuild it with `{rebuild}`")


def read_json(path: str | Path, what: str, rebuild: str) -> Any:
    """The JSON document in `path` (a `what`, written by `rebuild`)."""
    path = Path(path)
    if not path.is_file():
        raise DmlReproError(f"{what} {path} does not exist; build it with `{rebuild}`")
    try:
        return json.loads(path.read_text("utf-8"))
    except UnicodeDecodeError as exc:
        raise _unreadable(path, what, f"not UTF-8 text: {exc.reason} at byte {exc.start}", rebuild) from None
    except json.JSONDecodeError as exc:
        raise _unreadable(path, what, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                          rebuild) from None
    except OSError as exc:
        raise DmlReproError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_torch(path: str | Path, what: str, rebuild: str) -> Any:
    """torch.load of a file this package wrote (a trained model, a checkpoint)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DmlReproError(f"{what} {path} does not exist; build it with `{rebuild}`")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except OSError as exc:
        raise DmlReproError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, zip reader errors, EOFError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _unreadable(path, what, f"{type(exc).__name__}{': ' + first[:200] if first else ''}",
                          rebuild) from None


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """The names of the floating-point tensors in a (nested) state that hold NaN or infinite values."""
    import torch

    if isinstance(state, torch.Tensor):
        return [prefix or "(tensor)"] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        return [bad for key, value in state.items() for bad in non_finite_tensors(value, f"{prefix}{key}.")]
    return []


def check_finite_weights(model: dict, path: Path, rebuild: str) -> None:
    """Refuse a model whose weights (any `*_state`) hold NaN or infinite values."""
    bad = [name.rstrip(".") for key, value in model.items() if key.endswith("_state")
           for name in non_finite_tensors(value, f"{key}.")]
    if bad:
        raise DmlReproError(f"trained model {path} holds NaN or infinite weights ({', '.join(bad[:3])}"
                            f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}); it cannot embed anything. "
                            f"Delete it and retrain with `{rebuild}` (if training diverges again, lower train.lr)")


def first_non_finite(array: np.ndarray, chunk: int = 1 << 22) -> int | None:
    """The flat index of the first NaN or infinite value of a float array (None if all are finite),
    checked in chunks so that a large array needs no second full-size copy."""
    if not np.issubdtype(array.dtype, np.floating):
        return None
    flat = array.reshape(-1)
    for start in range(0, flat.size, chunk):
        bad = np.flatnonzero(~np.isfinite(flat[start : start + chunk]))
        if bad.size:
            return start + int(bad[0])
    return None
