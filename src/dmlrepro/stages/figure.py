"""Stage `figure`: a sweep figure (.png, .csv) from its runs' metrics, and its MLflow experiment."""
from __future__ import annotations

from ..reporting.figures import write_figure
from ..study.declarations import Sweep
from .targets import write_and_log


def figure(params: dict, target: Sweep, record: bool = True) -> tuple[list, int | None]:
    return write_and_log(params, target, write_figure, record)
