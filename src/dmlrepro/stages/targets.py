"""What the table and figure stages share: write a target's files, then log its runs to its MLflow
experiment."""
from __future__ import annotations

from typing import Callable


def write_and_log(params: dict, target, write: Callable, record: bool = True) -> tuple[list, int | None]:
    """(the files written, the MLflow entries logged or None when not recording)."""
    paths = list(write(params, target))
    if not record:
        return paths, None
    from ..reporting.table_record import log_target

    return paths, log_target(params, target)
