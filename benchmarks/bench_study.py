"""Study expansion figures: runs trained versus table cells, and `snakemake -n` time.

The study: every baseline row at two embedding sizes (baselines/glyphs at 512-d and
baselines/glyphs_emb128 at 128-d under both protocols) plus the learning-rate sweep
baselines/ms_lr, on the repository's params.yaml. Nothing is trained: the dry run lists every job.

    python benchmarks/bench_study.py   # writes benchmarks/results/study.json
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"tables": ["baselines/glyphs", "baselines/glyphs_emb128"], "figures": ["baselines/ms_lr"]}


def count_cells(study) -> dict:
    tables = [study.table(r) for r in TARGETS["tables"]]
    sweeps = [study.sweep(r) for r in TARGETS["figures"]]
    cells = sum(len(t.rows) * len(t.decl["columns"]) * len(t.protocols) for t in tables)
    points = sum(len(s.points) for s in sweeps)
    per_cell_runs = sum(len(t.runs()) for t in [*tables, *sweeps])  # each target training its own
    return {"table_cells": cells, "figure_points": points,
            "runs_if_every_table_and_figure_trained_its_own": per_cell_runs,
            "runs_trained": len(study.runs_of(tables, sweeps))}



def main() -> None:
    sys.path.insert(0, str(REPO / "src"))
    from dmlrepro.study.params import load_params
    from dmlrepro.study.stages import job_counts
    from dmlrepro.study import load_study

    params = load_params(REPO / "params.yaml")
    params.update(TARGETS)
    t0 = time.perf_counter()
    study = load_study(params)
    result = {"load_study_s": round(time.perf_counter() - t0, 3), **count_cells(study)}

    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        shutil.copy(REPO / "Snakefile", ws)
        shutil.copytree(REPO / "workflow", ws / "workflow")
        shutil.copytree(REPO / "src", ws / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = subprocess.run(["snakemake", "-n", "--cores", "2", "--quiet", "rules"], cwd=ws,
                                 capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - t0)
        result["snakemake_dry_run_s"] = {"min": round(min(times), 2), "max": round(max(times), 2)}
        result["snakemake_dry_run_jobs"] = job_counts(out.stdout)
    out_dir = REPO / "benchmarks/results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
