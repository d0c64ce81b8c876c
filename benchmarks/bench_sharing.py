"""Sharing a study: push and pull time, remote size, and a teammate's wait from `git clone` to the
rebuilt tables, against rerunning the pipeline.

    python benchmarks/bench_sharing.py [WORKSPACE]   # a study that has run the pipeline (default: this repository)
    python benchmarks/bench_sharing.py --tiny        # first build the tests' tiny glyphs study in a temporary folder

WORKSPACE must have its build recorded (`dvc status` clean) and committed (dvc.lock and results/),
since a teammate clones the commit. Nothing of it changes: the benchmark pushes to empty folder
remotes in a temporary directory (two `--local` remotes, removed afterwards: .dvc/config.local is
restored byte for byte) and clones the workspace's HEAD. Measured, in seconds:

* push: plain `dvc push`, then `dmlrepro push` (md5 checks before, presence check after) to another
  empty remote, then `dmlrepro push` again (nothing new);
* remote: bytes and objects, by kind (datasets, features, models: dvc.lock's output sizes);
* teammate: `git clone`, `dmlrepro pull` (fetch, md5 checks, checkout) and, in a second clone, plain
  `dvc pull`; `snakemake --touch`; `snakemake -n` (must have nothing to do); the rebuild of every
  table and figure (deleted first; `snakemake` must run no prepare/extract/train/evaluate job),
  compared byte for byte with the workspace's;
* against: the pipeline's job time, summed from the workspace's results/benchmarks/*.tsv (with
  --tiny, also the wall time of the build itself).

Writes benchmarks/results/sharing.json (--output to change).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from dmlrepro.study.stages import job_counts  # noqa: E402
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
REBUILT_RULES = {"table", "figure", "all"}


def sh(cmd: list[str], cwd: Path, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return round(seconds, 2), result



def folder_size(path: Path) -> dict:
    files = [p for p in path.rglob("*") if p.is_file()]
    return {"bytes": sum(p.stat().st_size for p in files), "objects": len(files)}


def by_kind(ws: Path) -> dict:
    """dvc.lock's cached output sizes by kind: datasets, features, models."""
    from dmlrepro.sharing import cached_outputs

    paths = yaml.safe_load((ws / "params.yaml").read_text())["paths"]
    kinds = {"datasets": paths["data"], "features": paths["features"], "models": paths["runs"]}
    sizes = {out["path"]: (out.get("size", 0), out.get("nfiles", 1))
             for stage in yaml.safe_load((ws / "dvc.lock").read_text())["stages"].values()
             for out in stage.get("outs", [])}
    result = {k: {"outputs": 0, "files": 0, "bytes": 0} for k in [*kinds, "other"]}
    for out in cached_outputs(ws):
        kind = next((k for k, prefix in kinds.items() if out.path.startswith(prefix.rstrip("/") + "/")
                     or out.path == prefix), "other")
        size, nfiles = sizes[out.path]
        result[kind]["outputs"] += 1
        result[kind]["files"] += nfiles
        result[kind]["bytes"] += size
    return {k: v for k, v in result.items() if v["outputs"]}


def pipeline_job_seconds(ws: Path) -> dict:
    """Sum of Snakemake's per-job benchmark times (column s), by rule."""
    totals: dict[str, float] = {}
    for tsv in (ws / "results/benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(ws / "results/benchmarks").parts[0]
        rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
        if rows:
            totals[rule] = totals.get(rule, 0.0) + float(rows[-1]["s"])
    return {"by_rule": {k: round(v, 1) for k, v in sorted(totals.items())},
            "total": round(sum(totals.values()), 1)} if totals else {}


def build_tiny(folder: Path) -> tuple[Path, float]:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_workspace, tiny_params

    ws = make_workspace(folder, tiny_params())
    seconds, _ = sh(["snakemake", "--cores", "2"], ws)
    sh(["git", "add", "-A"], ws)
    sh(["git", "commit", "-qm", "the tiny study, built"], ws)
    return ws, seconds


def check_workspace(ws: Path) -> None:
    if not (ws / "dvc.lock").is_file():
        sys.exit(f"{ws} has no dvc.lock: run the pipeline first (make run), or use --tiny")
    _, status = sh(["dvc", "status", "--json"], ws)
    if json.loads(status.stdout or "{}"):
        sys.exit(f"`dvc status` in {ws} is not clean: record the build first (dmlrepro dvc-commit)")
    _, git = sh(["git", "status", "--porcelain", "--", "dvc.lock", "dvc.yaml", "params.yaml", "results"], ws)
    if git.stdout.strip():
        sys.exit(f"{ws}: dvc.lock or results/ are not committed, so a clone would not have them:\n{git.stdout}")


def teammate(ws: Path, tmp: Path, remote: Path, dmlrepro: str) -> dict:
    out: dict = {}
    clone = tmp / "clone"
    out["git_clone_s"], _ = sh(["git", "clone", "-q", str(ws), str(clone)], tmp)
    sh(["dvc", "remote", "add", "--local", "--default", "bench_sharing", str(remote)], clone)
    out["dmlrepro_pull_s"], pulled = sh([dmlrepro, "pull"], clone)
    out["pull_message"] = pulled.stdout.strip().splitlines()[-1]
    out["snakemake_touch_s"], _ = sh(["snakemake", "--touch", "--forceall", "--cores", "1", "--quiet"], clone)
    out["dvc_status_clean"] = json.loads(sh(["dvc", "status", "--json"], clone)[1].stdout or "{}") == {}
    seconds, dry = sh(["snakemake", "-n", "--cores", "1"], clone)
    out["snakemake_dry_run_s"] = seconds
    out["snakemake_nothing_to_do"] = "Nothing to be done" in dry.stdout + dry.stderr
    targets = sh(["git", "ls-files", "results/tables", "results/figures"], clone)[1].stdout.split()
    for target in targets:
        (clone / target).unlink()
    seconds, rebuilt = sh(["snakemake", "--cores", "2"], clone)
    out["rebuild_tables_s"] = seconds
    out["rebuild_jobs"] = job_counts(rebuilt.stdout + rebuilt.stderr)
    out["rebuild_ran_only_tables_and_figures"] = set(out["rebuild_jobs"]) - {"total"} <= REBUILT_RULES
    differ = [t for t in targets if (clone / t).read_bytes() != (ws / t).read_bytes()]
    out["tables_and_figures"] = len(targets)
    out["identical_to_workspace"] = not differ
    if differ:
        out["differing"] = differ
    out["clone_to_tables_s"] = round(out["git_clone_s"] + out["dmlrepro_pull_s"] + out["snakemake_touch_s"]
                                     + out["rebuild_tables_s"], 1)
    plain = tmp / "clone-plain"  # plain `dvc pull`, for comparison with dmlrepro pull's checks
    sh(["git", "clone", "-q", str(ws), str(plain)], tmp)
    sh(["dvc", "remote", "add", "--local", "--default", "bench_sharing", str(remote)], plain)
    out["plain_dvc_pull_s"], _ = sh(["dvc", "pull"], plain)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", nargs="?", default=str(REPO))
    parser.add_argument("--tiny", action="store_true", help="build the tests' tiny glyphs study and use it")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/sharing.json"))
    args = parser.parse_args()
    dmlrepro = str(BIN / "dmlrepro")
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    with tempfile.TemporaryDirectory(prefix="bench_sharing-") as tmp_name:
        tmp = Path(tmp_name)
        if args.tiny:
            (tmp / "tiny").mkdir()
            ws, build_s = build_tiny(tmp / "tiny")
            result["workspace"] = "tiny glyphs fixture of the tests (tests/conftest.py: tiny_params), built here"
            result["pipeline_wall_s"] = round(build_s, 1)
        else:
            ws = Path(args.workspace).resolve()
            result["workspace"] = str(ws)
        check_workspace(ws)
        result["outputs_by_kind"] = by_kind(ws)
        local_config = ws / ".dvc/config.local"
        saved = local_config.read_bytes() if local_config.exists() else None
        remotes = {name: tmp / name for name in ("remote-dvc", "remote-dmlrepro")}
        try:
            for name, folder in remotes.items():
                folder.mkdir()
                sh(["dvc", "remote", "add", "--local", f"bench_{name.split('-')[1]}", str(folder)], ws)
            push: dict = {}
            push["plain_dvc_push_s"], _ = sh(["dvc", "push", "--remote", "bench_dvc"], ws)
            push["dmlrepro_push_s"], pushed = sh([dmlrepro, "push", "--remote", "bench_dmlrepro"], ws)
            push["dmlrepro_push_again_s"], _ = sh([dmlrepro, "push", "--remote", "bench_dmlrepro"], ws)
            push["message"] = next(line for line in pushed.stdout.splitlines() if "the remote holds" in line)
            result["push"] = push
            result["remote"] = folder_size(remotes["remote-dmlrepro"])
            result["remote_plain_dvc_push"] = folder_size(remotes["remote-dvc"])
            result["teammate"] = teammate(ws, tmp, remotes["remote-dmlrepro"], dmlrepro)
        finally:
            if saved is None:
                local_config.unlink(missing_ok=True)
            else:
                local_config.write_bytes(saved)
        result["pipeline_job_seconds"] = pipeline_job_seconds(ws)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
