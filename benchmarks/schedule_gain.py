"""What a longer schedule changed: each run's best validation R@1 (the selection metric), its best
epoch and its test R@1, in the metrics committed at an earlier revision against the working tree's.

    python benchmarks/schedule_gain.py --before 40ad24a --dataset glyphs_sop --table da/main

Used when a dataset's `train_per_dataset:` schedule changes (a run keeps its folder, so the same
path at the two revisions holds the two schedules): the convergence rule asks whether doubling
the schedule gains under 0.5 validation points, and this shows it run by run for a whole table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dmlrepro.study.params import load_params  # noqa: E402
from table_costs import table_runs  # noqa: E402  (this script's folder is on sys.path)


def committed(revision: str, path: Path) -> dict | None:
    """The JSON file at `path` as `revision` holds it, or None where it does not."""
    shown = subprocess.run(["git", "show", f"{revision}:{path.relative_to(ROOT).as_posix()}"],
                           cwd=ROOT, capture_output=True, text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def summary(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    # the test split's R@1, or the first of a split test's lists (VehicleID-shaped: test_800)
    test = metrics.get("test") or next(metrics[k] for k in sorted(metrics, key=len) if k.startswith("test_"))
    return {"epochs": metrics["last_epoch"], "best_epoch": metrics["best_epoch"],
            "val": 100 * metrics["val"]["recall@1"], "test": 100 * test["recall@1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="git revision holding the shorter schedule's metrics")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--table", action="append", required=True, help="PAPER/TABLE (repeatable)")
    args = ap.parse_args()
    os.chdir(ROOT)  # params.yaml's paths are relative to the checkout

    params = load_params(ROOT / "params.yaml")
    runs = {rid: run for table in args.table for rid, run in table_runs(params, table).get(args.dataset, {}).items()}
    gains = []
    print(f"{'run':58} {'epochs':>9} {'best ep':>9} {'val R@1':>15} {'gain':>6} {'test R@1':>15}")
    for key in sorted(runs):
        path = ROOT / runs[key].dir(params) / "metrics.json"
        before = summary(committed(args.before, path))
        after = summary(json.loads(path.read_text())) if path.is_file() else None
        if before is None or after is None:
            print(f"{key:58} {'not built at both revisions':>40}")
            continue
        gain = after["val"] - before["val"]
        if after["epochs"] != before["epochs"]:  # a run whose schedule stayed is no evidence either way
            gains.append(gain)
        print(f"{key:58} {before['epochs']:>4}>{after['epochs']:<4} {before['best_epoch']:>4}>{after['best_epoch']:<4} "
              f"{before['val']:6.2f}>{after['val']:6.2f} {gain:+6.2f} {before['test']:6.2f}>{after['test']:6.2f}")
    if gains:
        print(f"{len(gains)} runs on a longer schedule: validation gain mean {statistics.mean(gains):+.2f}, "
              f"min {min(gains):+.2f}, max {max(gains):+.2f}; under 0.5 in {sum(g < 0.5 for g in gains)}")


if __name__ == "__main__":
    main()
