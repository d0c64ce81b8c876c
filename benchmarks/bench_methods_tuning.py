"""Choose the methods' own hyper-parameters on the validation split, as the baselines' were chosen.

The rule and budget of benchmarks/bench_baselines.py (its settings stage): seed 0, validation
Recall@1 (the best epoch of a class-disjoint split carved from the training classes), the test
split never loaded, the ``--epochs`` schedule (lr cut at 60 % and 80 % of it), one-parameter
grids with the paper's value first, and the paper's value kept unless another value beats it by
more than ``--tolerance`` points. The base loss keeps its tuned settings (params.yaml's
``methods.<name>``: its margins, beta, lr); only the method's own keys move, in stages:

========  =======================================  ===============================================
method    bases                                    stages (first value: the paper's / current one)
========  =======================================  ===============================================
iaa       contrastive_sim_iaa, triplet_iaa,        lambda (method.augmenter.iaa.lam):
          multi_similarity_iaa                     0.8, 0.1, 0.2, 0.4, 0.6, 1.0
sgar      sgar (Proxy-Anchor)                      lam: 0.23, 0.1, 0.5; then tau at the chosen
                                                   lam: 0.05, 0.25, 1.0
da        contrastive_da, npair_da, triplet_da     weight (method.regularizer.density.weight):
                                                   1.0, 0.1, 0.3, 3.0, 10.0; then eta at the
                                                   chosen weight: 0.5, 0.25, 1.0
========  =======================================  ===============================================

A later stage runs at the earlier stages' chosen values; its first value's configuration is the
earlier stage's chosen run, which is reused, not trained again. Per dataset shape: ``--dataset
glyphs`` (the CUB/Cars-shaped columns) and ``--dataset glyphs_sop`` (SOP/In-Shop/VehicleID);
the dataset is prepared and its features extracted first if missing.

    python benchmarks/bench_methods_tuning.py --method da                  # glyphs, every DA base
    python benchmarks/bench_methods_tuning.py --method iaa --bases multi_similarity_iaa
    python benchmarks/bench_methods_tuning.py --method sgar --dataset glyphs_sop --workers 2

Writes benchmarks/results/<method>_tuning.json (iaa_tuning.json, sgar_tuning.json,
da_tuning.json): ``datasets.<dataset>.<base>`` holds every configuration's validation curve
(R@1 % per epoch), its best epoch and value, its wall and CPU seconds, each stage's peaks and
choice, and the chosen values beside the paper's. Each base is written when it finishes, merged
into what the file already holds (other datasets and bases are kept) with an atomic rename, so a
run can be stopped, resumed (``--skip-done``) or extended one base or dataset at a time.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
sys.path.insert(0, str(ROOT))
from bench_baselines import schedule  # noqa: E402  (the baselines' schedule: milestones at 60 % / 80 %)

#: method -> its bases and its stages (dotted key, grid); the paper's (current) value first.
METHODS = {
    "iaa": {
        "bases": ("contrastive_sim_iaa", "triplet_iaa", "multi_similarity_iaa"),
        "stages": (("method.augmenter.iaa.lam", (0.8, 0.1, 0.2, 0.4, 0.6, 1.0)),),
    },
    "sgar": {
        "bases": ("sgar",),
        # tau gates <P_c, x_i> (raw proxies, whose norms grow past 1 as they train): values at and
        # below 0.05 gate nearly every sample alike, so the informative direction is stricter gates
        "stages": (("method.augmenter.sgar.lam", (0.23, 0.1, 0.5)),
                   ("method.augmenter.sgar.tau", (0.05, 0.25, 1.0))),
    },
    "da": {
        "bases": ("contrastive_da", "npair_da", "triplet_da"),
        "stages": (("method.regularizer.density.weight", (1.0, 0.1, 0.3, 3.0, 10.0)),
                   ("method.regularizer.density.eta", (0.5, 0.25, 1.0))),
    },
}
SEED = 0
PROTOCOL = (f"seed {SEED}, selection on validation R@1 (%, best epoch); the test split is never read; "
            "the base loss keeps params.yaml's tuned settings")
RULE = ("per stage, the paper's (first) value is kept unless another value's best validation R@1 beats "
        "it by more than `tolerance` points (then the best one, the first in grid order on ties); a "
        "later stage runs at the earlier stages' chosen values (benchmarks/bench_baselines.py's rule)")


def choose(peaks: dict, paper, tolerance: float):
    """The rule: the best value if it beats the paper's by more than `tolerance` points, else the
    paper's. peaks: {value: best validation R@1}, in grid order (ties go to the earlier value)."""
    best = max(peaks, key=lambda v: peaks[v])
    return best if round(peaks[best] - peaks[paper], 6) > tolerance else paper


def config_value(params: dict, dataset: str, method: str, key: str):
    """params.yaml's value of a dotted run key for (dataset, method), wrapper defaults filled in."""
    from dmlrepro.study.runs import default_config

    node = default_config(params, dataset, method)
    for part in key.split("."):
        node = node[part]
    return node


def train_curve(job: tuple) -> dict:
    """Train one configuration on seed 0; its validation curve. Only the train and val splits of
    the features are read (train_frozen without test_every_epoch)."""
    params, dataset, method, overrides, tag = job
    from dmlrepro.study.runs import RunPaths, resolve_run
    from dmlrepro.training.frozen import train_frozen

    run = resolve_run(params, dataset, method, SEED, [("benchmark", overrides, overrides)])
    out = Path(params["paths"]["runs"]) / tag
    t0, c0 = time.time(), time.process_time()
    train_frozen(run, RunPaths.of(params, run, out), "cpu", test_every_epoch=False)
    seconds, cpu = time.time() - t0, time.process_time() - c0
    history = json.loads((out / "history.json").read_text())
    val = [round(100 * e["val"]["recall@1"], 2) for e in history["epochs"]]
    return {"method": method, "overrides": overrides, "val_r1": val, "best": max(val),
            "best_epoch": 1 + val.index(max(val)), "last3_spread": round(max(val[-3:]) - min(val[-3:]), 2),
            "loss": [round(e["loss"], 5) for e in history["epochs"]],
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1)}


def tune_base(params: dict, dataset: str, method: str, stages, epochs: int, tolerance: float,
              runner=None, workers: int = 1, tag: str = "") -> dict:
    """Run the staged grids for one base method; its report entry (curves, peaks, choices).

    runner(jobs) -> results, one per job (params, dataset, method, overrides, tag), in order;
    default: train_curve over a pool of `workers` processes (in this process when 1)."""
    if runner is None:
        def runner(jobs):
            if workers <= 1:
                return [train_curve(j) for j in jobs]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(train_curve, jobs))
    t0 = time.time()
    fixed = {**schedule(epochs)}
    paper = {key: grid[0] for key, grid in stages}
    chosen, report_stages, done = {}, [], {}
    for key, grid in stages:
        current = config_value(params, dataset, method, key)
        if current != grid[0]:
            print(f"  note: params.yaml runs {method} at {key} = {current}; the paper's value {grid[0]} "
                  "stays the reference of the rule", flush=True)
        # every stage's key is set: the later ones at the paper's value until their stage
        configs = [{**fixed, **paper, **chosen, key: v} for v in grid]
        # the first value's configuration may be the previous stage's chosen run: reuse it
        todo = [c for c in configs if json.dumps(c, sort_keys=True) not in done]
        jobs = [(params, dataset, method, c, f"{tag}{method}-{len(done) + i:02d}") for i, c in enumerate(todo)]
        for result in runner(jobs):
            done[json.dumps(result["overrides"], sort_keys=True)] = result
            print(f"  {method:22s} {key.rsplit('.', 1)[-1]} = {result['overrides'][key]!s:6s} "
                  f"{' '.join(f'{k.rsplit(chr(46), 1)[-1]}={v}' for k, v in chosen.items())} best val R@1 {result['best']:.2f} "
                  f"(epoch {result['best_epoch']}) {result['seconds']:.0f} s, {result['cpu_seconds']:.0f} CPU s",
                  flush=True)
        runs = []
        for c in configs:
            r = dict(done[json.dumps(c, sort_keys=True)])
            if c not in [j[3] for j in jobs]:
                r["reused"] = "the previous stage's chosen run (same configuration)"
            runs.append(r)
        peaks = {v: r["best"] for v, r in zip(grid, runs)}
        pick = choose(peaks, grid[0], tolerance)
        best = max(peaks, key=lambda v: peaks[v])
        chosen[key] = pick
        report_stages.append({
            "key": key, "values": list(grid), "paper": grid[0], "at": {k: chosen[k] for k in chosen if k != key},
            "peaks": [{"value": v, "best": r["best"], "best_epoch": r["best_epoch"]} for v, r in zip(grid, runs)],
            "best_value": best, "gain_over_paper": round(peaks[best] - peaks[grid[0]], 2), "chosen": pick,
            "runs": runs,
        })
        print(f"  {method}: {key} peaks {peaks}; best {best} (+{peaks[best] - peaks[grid[0]]:.2f} over the paper's "
              f"{grid[0]}) -> {pick}", flush=True)
    final = done[json.dumps({**fixed, **paper, **chosen}, sort_keys=True)]
    return {
        "epochs": epochs, "schedule": fixed, "seed": SEED, "tolerance": tolerance,
        "base_settings": {k: v for k, v in params["methods"][method].items() if k not in ("augmenter", "regularizer")},
        "paper": paper, "chosen": chosen, "differs_from_paper": {k: chosen[k] != paper[k] for k in chosen},
        "any_differs": any(chosen[k] != paper[k] for k in chosen),
        "chosen_best": final["best"], "paper_best": report_stages[0]["peaks"][0]["best"],
        "stages": report_stages,
        "seconds": round(time.time() - t0, 1),
        "train_seconds": round(sum(r["seconds"] for r in done.values()), 1),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in done.values()), 1),
        "trained_runs": len(done),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_entry(out: Path, method: str, dataset: str, base: str, entry: dict, features: str) -> None:
    """Merge one base's entry into the file (kept: every other dataset and base), atomically."""
    from dmlrepro import atomic

    report = json.loads(out.read_text()) if out.exists() else {}
    report.update({"method": method, "protocol": PROTOCOL, "rule": RULE})
    report.setdefault("datasets", {}).setdefault(dataset, {})[base] = {**entry, "features": features}
    atomic.write_text(out, json.dumps(report, indent=1) + "\n")


def ensure_features(params_file: Path, params: dict, dataset: str, methods) -> str:
    """Prepare the dataset and extract its features if missing (bench_baselines does the same for
    glyphs); returns the features file the runs read."""
    from dmlrepro.study.runs import resolve_run

    feats = {f.id: f for f in (resolve_run(params, dataset, m, SEED).features for m in methods)}
    for fid, feat in feats.items():
        if not feat.path(params).exists():
            if not (Path(params["paths"]["data"]) / dataset / "manifest.csv").exists():
                subprocess.run(["dmlrepro", "--params", str(params_file), "prepare", "--dataset", dataset], check=True)
            subprocess.run(["dmlrepro", "--params", str(params_file), "extract", "--features", fid], check=True)
    return ", ".join(str(f.path(params)) for f in feats.values())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=sorted(METHODS), required=True)
    ap.add_argument("--bases", nargs="+", help="only these base methods (default: all of the method's)")
    ap.add_argument("--dataset", default="glyphs",
                    help="glyphs (CUB/Cars-shaped columns) or glyphs_sop (SOP/In-Shop/VehicleID); any "
                         "params.yaml dataset is accepted")
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--epochs", type=int, default=20, help="the schedule the baselines' settings were chosen on")
    ap.add_argument("--workers", type=int, default=1, help="training processes in parallel (1 torch thread each)")
    ap.add_argument("--tolerance", type=float, default=0.3, help="val R@1 points another value must gain")
    ap.add_argument("--skip-done", action="store_true",
                    help="skip a base the file already holds for this dataset at the same epochs, grids and tolerance")
    ap.add_argument("--out", help="default: benchmarks/results/<method>_tuning.json")
    args = ap.parse_args(argv)

    from dmlrepro.study.params import load_params

    spec = METHODS[args.method]
    bases = args.bases or list(spec["bases"])
    unknown = sorted(set(bases) - set(spec["bases"]))
    if unknown:
        ap.error(f"--bases {unknown}: not a base of {args.method} ({', '.join(spec['bases'])})")
    params_file = Path(args.params)
    params = load_params(params_file)
    if args.dataset not in params["datasets"]:
        ap.error(f"--dataset {args.dataset}: not in {params_file} (datasets: {', '.join(params['datasets'])})")
    out = Path(args.out or ROOT / "results" / f"{args.method}_tuning.json")
    features = ensure_features(params_file, params, args.dataset, bases)
    stages = spec["stages"]
    with tempfile.TemporaryDirectory(prefix="bench-methods-tuning-") as tmp:
        params = copy.deepcopy(params)
        params["paths"].update({"runs": f"{tmp}/runs", "checkpoints": f"{tmp}/ckpt"})
        params["train"]["threads"] = 1
        params.setdefault("evaluation", {}).update({"threads": 1, "test_every_epoch": False})
        for base in bases:
            if args.skip_done and out.exists():
                old = json.loads(out.read_text()).get("datasets", {}).get(args.dataset, {}).get(base)
                if old and old["epochs"] == args.epochs and old["tolerance"] == args.tolerance and \
                        [(s["key"], s["values"]) for s in old["stages"]] == [(k, list(g)) for k, g in stages]:
                    print(f"{args.dataset}/{base}: already in {out}, skipped", flush=True)
                    continue
            print(f"{args.dataset}/{base}: {' then '.join(f'{k} {list(g)}' for k, g in stages)}, "
                  f"{args.epochs} epochs, seed {SEED}", flush=True)
            entry = tune_base(params, args.dataset, base, stages, args.epochs, args.tolerance,
                              workers=args.workers, tag=f"{args.dataset}-")
            write_entry(out, args.method, args.dataset, base, entry, features)
            print(f"{args.dataset}/{base}: chosen {entry['chosen']} (paper {entry['paper']}), "
                  f"{entry['seconds']:.0f} s wall, {entry['cpu_seconds']:.0f} CPU s; wrote {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
