"""Stage `table`: a paper table (.md, .csv, .html) from its runs' metrics, and its MLflow experiment."""
from __future__ import annotations

from ..reporting.tables import write_table
from ..study.declarations import Table
from .targets import write_and_log


def table(params: dict, target: Table, record: bool = True) -> tuple[list, int | None]:
    return write_and_log(params, target, write_table, record)
