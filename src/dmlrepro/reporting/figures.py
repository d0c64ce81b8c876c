"""Sweep figures: a metric versus one run key, mean over seeds with the 95% interval as a band,
and the published curve where the paper gives one. Writes a PNG and the CSV behind it."""
from __future__ import annotations

import csv
import io
import math
import numbers
from pathlib import Path

from .. import atomic
from ..paths import figure_paths
from ..study.declarations import Sweep
from .stats import mean_ci
from .cells import metric_value


def sweep_points(params: dict, sweep: Sweep) -> list[dict]:
    """One record per (dataset, value): mean, CI half-width and n over seeds, published value."""
    decl = sweep.decl
    published = decl.get("published", {})
    records = []
    for i, point in enumerate(sweep.points):
        values = [metric_value(params, r, decl.get("protocol", "honest"), decl.get("split", "test"), decl["metric"])
                  for r in point.runs]
        mean, half = mean_ci(values)
        curve = published.get(point.dataset)
        records.append({
            "dataset": point.dataset, "parameter": decl["parameter"], "value": point.value,
            "run": point.runs[0].name, "mean": round(100 * mean, 3),
            "ci95": None if math.isnan(half) else round(100 * half, 3), "n": len(values),
            "published": None if curve is None else curve[i % len(decl["values"])],
        })
    return records


def _plot(sweep: Sweep, records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decl = sweep.decl
    values = decl["values"]
    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
    xs = values if numeric else list(range(len(values)))
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for dataset in decl["datasets"]:
        rows = [r for r in records if r["dataset"] == dataset]
        mean = [r["mean"] for r in rows]
        half = [0.0 if r["ci95"] is None else r["ci95"] for r in rows]
        n = rows[0]["n"]
        line, = ax.plot(xs, mean, marker="o",
                        label=f"{dataset}: ours, mean ± 95% CI, n={n}" if n > 1 else f"{dataset}: ours, single run")
        ax.fill_between(xs, [max(0.0, m - h) for m, h in zip(mean, half)], [min(100.0, m + h) for m, h in zip(mean, half)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
        if any(r["published"] is not None for r in rows):
            ax.plot(xs, [r["published"] for r in rows], linestyle="--", marker="x", color=line.get_color(),
                    label=f"{dataset} (published)")
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in values])
    elif decl.get("log_x"):
        ax.set_xscale("log")
    ax.set_xlabel(decl.get("xlabel", decl["parameter"]))
    ax.set_ylabel(f"{decl['metric']} (%), {decl.get('protocol', 'honest')} protocol")
    ax.set_title(sweep.ref)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_figure(params: dict, sweep: Sweep) -> list[Path]:
    records = sweep_points(params, sweep)
    png, csv_path = figure_paths(params, sweep.paper, sweep.name)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic.write_text(csv_path, buf.getvalue())
    _plot(sweep, records, png)
    return [png, csv_path]
