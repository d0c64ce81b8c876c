"""What a declared table cost to build: per column, its runs' train and evaluate jobs, read from the
Snakemake benchmark files (one per job) of the folder that built them.

    python benchmarks/table_costs.py --build /work/wt-build iaa/table3 da/main

For each table and each dataset it uses: the runs (unique), how many have both benchmark files, and
their summed CPU and wall seconds per rule, plus the elapsed time from the first job's start to the
last job's end (the benchmark files' modification times minus their wall seconds), and the dataset's
prepare and extract jobs where this folder ran them (once per dataset: shared by its tables). Writes
benchmarks/results/main_tables.json, one entry per table, merged with the entries already there:
a column no job of this folder built, or built at other settings than this checkout's, keeps the
figures recorded for it.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "benchmarks/results/main_tables.json"

from dmlrepro.study import load_study  # noqa: E402
from dmlrepro.study.params import load_params  # noqa: E402


def job(tsv: Path) -> dict | None:
    """CPU and wall seconds of one job, and when it started and ended (epoch seconds)."""
    if not tsv.is_file():
        return None
    with tsv.open() as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    wall, end = float(row["s"]), tsv.stat().st_mtime
    return {"cpu": float(row.get("cpu_time") or 0), "wall": wall, "start": end - wall, "end": end}


def add_seconds(totals: dict, rule: str, jobs: list) -> None:
    totals[f"{rule}_cpu_s"] = round(sum(j["cpu"] for j in jobs), 1)
    totals[f"{rule}_wall_s"] = round(sum(j["wall"] for j in jobs), 1)


def column_costs(build: Path, runs) -> dict:
    bench = build / "results/benchmarks"
    totals = {"runs": len(runs), "built": 0}
    spans = []
    for rule in ("train", "evaluate"):
        jobs = [j for j in (job(bench / rule / f"{run.id}.tsv") for run in runs) if j]
        totals[f"{rule}_jobs"] = len(jobs)
        add_seconds(totals, rule, jobs)
        spans += jobs
    totals["built"] = sum((bench / "evaluate" / f"{run.id}.tsv").is_file() for run in runs)
    if not spans:
        return {"runs": len(runs), "note": "no job of these runs has a benchmark file here: built elsewhere or not yet"}
    totals["elapsed_min"] = round((max(j["end"] for j in spans) - min(j["start"] for j in spans)) / 60, 1)
    # the one-off jobs the column's runs stand on; every table on the same dataset shares them
    once = {"prepare": [job(bench / f"prepare/{runs[0].dataset}.tsv")],
            "extract": [job(bench / f"extract/{fs}.tsv") for fs in sorted({run.features.id for run in runs})]}
    for rule, jobs in once.items():
        if jobs := [j for j in jobs if j]:
            add_seconds(totals, rule, jobs)
    return totals


def table_runs(params: dict, ref: str) -> dict[str, dict]:
    """dataset -> {run id: run} of one table (runs shared by rows counted once)."""
    by_dataset: dict[str, dict] = {}
    for row in load_study(params).table(ref).rows:
        for dataset, runs in row.runs.items():
            by_dataset.setdefault(dataset, {}).update({run.id: run for run in runs})
    return by_dataset


def table_costs(build: Path, ref: str) -> dict:
    built_as = table_runs(load_params(build / "params.yaml"), ref)
    current = table_runs(load_params(ROOT / "params.yaml"), ref)
    costs = {}
    for dataset, runs in built_as.items():
        # a folder that built a column at other settings (e.g. a shorter schedule) does not cost this one
        if any(run.hash != current[dataset][rid].hash for rid, run in runs.items()):
            costs[dataset] = {"runs": len(runs), "note": "built there at other settings than this checkout's"}
        else:
            costs[dataset] = column_costs(build, list(runs.values()))
    return costs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, default=ROOT, help="the checkout whose results/benchmarks built the runs")
    ap.add_argument("tables", nargs="+", help="PAPER/NAME")
    args = ap.parse_args(argv)
    record = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for ref in args.tables:
        # a column this checkout did not build keeps the figures another build recorded for it
        kept = record.get(ref, {})
        record[ref] = {column: cost if cost.get("built") or column not in kept else kept[column]
                       for column, cost in table_costs(args.build.resolve(), ref).items()}
        print(json.dumps({ref: record[ref]}, indent=1))
    OUT.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
