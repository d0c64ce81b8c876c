"""The default build (`snakemake --cores N`, what `make run` does) from a fresh clone, timed.

A commit of this repository is cloned into a scratch folder; ``fonts/`` is linked from this checkout
(the issue's "fonts present"), the virtual environment is this checkout's, and the clone's own
``src/`` is imported (PYTHONPATH), so the commit's code runs. Recorded:

* the wall time of the whole build, and the machine's load before it (an idle machine is the figure);
* from Snakemake's benchmark files (one per job): per rule and per method, the jobs, their CPU
  seconds and wall seconds;
* whether the numbers moved: each run's metrics.json compared byte for byte with the one the
  commit has in git (the committed default build), and the runs whose files differ.

    python benchmarks/bench_default_build.py --commit HEAD --label after      # ~30-45 min on 2 cores
    python benchmarks/bench_default_build.py --commit b2a4800 --label before

Writes benchmarks/results/default_build.json (one entry per label).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results/default_build.json"


def job_table(bench_dir: Path) -> dict:
    """Per rule, and per rule and method, the jobs and their summed CPU and wall seconds."""
    per_rule, per_method = defaultdict(lambda: [0, 0.0, 0.0]), defaultdict(lambda: [0, 0.0, 0.0])
    for tsv in sorted(bench_dir.rglob("*.tsv")):
        rule = tsv.relative_to(bench_dir).parts[0]
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        cpu, wall = float(row.get("cpu_time") or 0), float(row["s"])
        parts = tsv.relative_to(bench_dir).parts
        keys = [(per_rule, rule)]
        if rule in ("train", "evaluate") and len(parts) >= 5:  # rule/dataset/backbone/name/seedK.tsv
            keys.append((per_method, f"{rule} {parts[3].split('-')[0]}"))
        for table, key in keys:
            table[key][0] += 1
            table[key][1] += cpu
            table[key][2] += wall
    fmt = lambda t: {k: {"jobs": n, "cpu_s": round(c, 1), "wall_s": round(w, 1)} for k, (n, c, w) in sorted(t.items())}
    return {"per_rule": fmt(per_rule), "per_method": fmt(per_method)}


def compare_metrics(clone: Path, runs: str = "results/runs") -> dict:
    """Each metrics.json the build wrote (its evaluate job left a benchmark file; the others are the
    clone's checkout) against the commit's own (git show): identical, differing, new."""
    same, differ, new = 0, [], []
    bench = clone / "results/benchmarks/evaluate"
    for tsv in sorted(bench.rglob("*.tsv")):
        path = clone / runs / tsv.relative_to(bench).with_suffix("") / "metrics.json"
        rel = path.relative_to(clone).as_posix()
        committed = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=clone, capture_output=True)
        if committed.returncode:
            new.append(rel)
        elif committed.stdout == path.read_bytes():
            same += 1
        else:
            differ.append(rel)
    return {"identical": same, "different": differ, "not_committed": new}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--label", required=True)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="build here and keep it (default: a temporary folder)")
    args = ap.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", args.commit], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="dmlrepro-build-") as tmp:
        clone = args.keep or Path(tmp) / "clone"
        subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
        (clone / "fonts").symlink_to(ROOT / "fonts")
        env = {**os.environ, "PYTHONPATH": str(clone / "src"),
               "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}"}
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        build = subprocess.run(["snakemake", "--cores", str(args.cores)], cwd=clone, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t0
        if build.returncode:
            sys.exit(f"the build failed:\n{build.stdout[-4000:]}")
        entry = {"commit": commit, "cores": args.cores, "cpus": os.cpu_count(), "load_1min_before": round(load, 2),
                 "date": time.strftime("%Y-%m-%d %H:%M"), "wall_s": round(wall, 1),
                 **job_table(clone / "results/benchmarks"), "metrics_vs_committed": compare_metrics(clone)}
    entry["cpu_s"] = round(sum(r["cpu_s"] for r in entry["per_rule"].values()), 1)
    existing = json.loads(OUT.read_text()) if OUT.is_file() else {}
    existing[args.label] = entry
    OUT.write_text(json.dumps(existing, indent=1) + "\n")
    m = entry["metrics_vs_committed"]
    print(f"{args.label}: {wall / 60:.1f} min wall, {entry['cpu_s'] / 60:.1f} CPU min; metrics identical "
          f"{m['identical']}, different {len(m['different'])}, new {len(m['not_committed'])}; wrote {OUT}")


if __name__ == "__main__":
    main()
