"""Stage `table`: a paper table (.md, .csv, .html) from its runs' metrics, and its MLflow experiment."""
from __future__ import annotations

from ..reporting.tables import write_table
from ..study.declarations import Table
from .targets import write_and_log


def table(params: dict, target: Table, record: bool = True, partial: bool = False) -> tuple[list, int | None]:
    """``partial``: the built cells only, the rest marked *not built*; nothing is logged to MLflow
    (an experiment holds whole tables)."""
    if partial:
        return write_table(params, target, partial=True), None
    return write_and_log(params, target, write_table, record)
