"""Choose the baselines' schedule, learning rates and loss settings on the validation split.

The honest protocol: every choice here is made on validation Recall@1 (a class-disjoint split
carved from the training classes); the test split is never loaded. Three stages, each a small
grid, all on seed 0 and the features params.yaml builds (prepared and extracted first if missing):

1. **lr**: every baseline at each learning rate of ``--lrs`` on the ``--epochs`` schedule
   (lr cut by ``lr_gamma`` at 60 % and 80 % of the epochs). One shared lr (the best mean over the
   baselines) is kept for a baseline unless its own best lr beats it by more than ``--tolerance``
   points: then that baseline gets its own (``methods.<name>.train.lr``).
2. **settings**: at its chosen lr, each baseline's main loss setting (``SETTINGS``); the papers'
   value is kept unless another beats it by more than ``--tolerance`` points.
3. **convergence**: the chosen configuration on the schedule and on the doubled schedule. The
   acceptance of the baselines issue: validation R@1 has plateaued (the last three epochs within
   0.3 points) and doubling the schedule changes the best validation R@1 by less than 0.5 points.
   Checking the doubled schedule next (``--epochs 2E`` after ``--epochs E``, same --out) reuses
   the previous check's doubled run instead of training it again.

    python benchmarks/bench_baselines.py                 # ~25 minutes on 2 cores
    python benchmarks/bench_baselines.py --stage convergence --epochs 20
    python benchmarks/bench_baselines.py --stage convergence --epochs 40 --dataset glyphs_sop \
        --methods triplet_hardest triplet_iaa --out benchmarks/results/convergence_large.json

Writes benchmarks/results/baselines.json (committed: it documents params.yaml's choices).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
BASELINES = ("contrastive", "triplet", "npair", "multi_similarity", "proxy_anchor")
#: The one loss setting per baseline the settings stage varies (the papers' value first).
SETTINGS = {
    "contrastive": ("method.loss_args.neg_margin", [0.5, 0.3, 0.7]),
    "triplet": ("method.loss_args.margin", [0.1, 0.05, 0.2]),
    "npair": ("method.loss_args.temperature", [0.1, 0.05, 0.2]),
    "multi_similarity": ("method.loss_args.beta", [40.0, 20.0, 50.0]),
    "proxy_anchor": ("method.loss_args.margin", [0.1, 0.05, 0.2]),
}


def schedule(epochs: int) -> dict:
    return {"train.epochs": epochs, "train.lr_milestones": [round(0.6 * epochs), round(0.8 * epochs)]}


def _train(job: tuple) -> dict:
    """Train one configuration on seed 0; its validation curve (no test split is read)."""
    params, dataset, method, overrides, tag = job
    from dmlrepro.study.runs import RunPaths, resolve_run
    from dmlrepro.training.frozen import train_frozen

    run = resolve_run(params, dataset, method, 0, [("benchmark", overrides, overrides)])
    out = Path(params["paths"]["runs"]) / tag
    t0 = time.time()
    train_frozen(run, RunPaths.of(params, run, out), "cpu")
    history = json.loads((out / "history.json").read_text())
    val = [round(100 * e["val"]["recall@1"], 2) for e in history["epochs"]]
    return {"method": method, "overrides": overrides, "val_r1": val, "best": max(val),
            "best_epoch": 1 + val.index(max(val)), "last3_spread": round(max(val[-3:]) - min(val[-3:]), 2),
            "embedding_norm": [e.get("embedding_norm") for e in history["epochs"]],
            "seconds": round(time.time() - t0, 1)}


def _as_single(method: str, overrides: dict, previous: dict) -> dict:
    """A previous check's doubled run, as this check's single-schedule result."""
    val = previous["doubled_curve"]
    return {"method": method, "overrides": overrides, "val_r1": val, "best": previous["doubled_best"],
            "best_epoch": previous["doubled_best_epoch"], "last3_spread": round(max(val[-3:]) - min(val[-3:]), 2),
            "reused": True}


def _run_all(params: dict, dataset: str, jobs: list, workers: int) -> list:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_train, [(params, dataset, m, o, f"{i:03d}-{m}") for i, (m, o) in enumerate(jobs)]))
    for r in results:
        print(f"  {r['method']:18s} {json.dumps(r['overrides'], sort_keys=True):80s} best val R@1 {r['best']:.2f} "
              f"(epoch {r['best_epoch']}, last-3 spread {r['last3_spread']:.2f}) {r['seconds']:.0f} s", flush=True)
    return results


def _ensure_features(params_file: Path, params: dict, dataset: str, methods: list) -> None:
    from dmlrepro.study.runs import resolve_run

    feats = {run.features.id: run.features for run in (resolve_run(params, dataset, m, 0, []) for m in methods)}
    for fid, feat in feats.items():
        if not feat.path(params).exists():
            if not (Path(params["paths"]["data"]) / dataset / "manifest.csv").exists():
                subprocess.run(["dmlrepro", "--params", str(params_file), "prepare", "--dataset", dataset], check=True)
            subprocess.run(["dmlrepro", "--params", str(params_file), "extract", "--features", fid], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3])
    ap.add_argument("--methods", nargs="+", default=list(BASELINES),
                    help="any method of params.yaml; the lr and settings stages need the baselines'")
    ap.add_argument("--dataset", default="glyphs", help="a dataset of params.yaml (its validation split is used)")
    ap.add_argument("--stage", choices=("all", "lr", "settings", "convergence"), default="all")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=0.3, help="val R@1 points a per-method lr must gain")
    ap.add_argument("--out", default=str(ROOT / "results" / "baselines.json"))
    args = ap.parse_args()

    from dmlrepro.study.params import load_params

    params_file = Path(args.params)
    params = load_params(params_file)
    _ensure_features(params_file, params, args.dataset, args.methods)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    if args.dataset == "glyphs":
        report["features"] = str(Path(params["paths"]["features"]) / "glyphs")
    report.update({
                   "protocol": "seed 0, selection on validation R@1 (%); the test split is never read"})
    with tempfile.TemporaryDirectory(prefix="bench-baselines-") as tmp:
        params = copy.deepcopy(params)
        params["paths"].update({"runs": f"{tmp}/runs", "checkpoints": f"{tmp}/ckpt"})
        params["train"]["threads"] = 1
        base = schedule(args.epochs)
        chosen = report.setdefault("chosen", {})

        if args.stage in ("all", "lr"):
            print(f"stage lr: {args.methods} x lr {args.lrs}, {args.epochs} epochs", flush=True)
            jobs = [(m, {**base, "train.lr": lr}) for m in args.methods for lr in args.lrs]
            results = _run_all(params, args.dataset, jobs, args.workers)
            report["lr"] = {"epochs": args.epochs, "runs": results}
            score = {(r["method"], r["overrides"]["train.lr"]): r["best"] for r in results}
            shared = max(args.lrs, key=lambda lr: sum(score[m, lr] for m in args.methods))
            report["shared_lr"] = shared
            for m in args.methods:
                own = max(args.lrs, key=lambda lr: score[m, lr])
                keep_own = score[m, own] - score[m, shared] > args.tolerance
                chosen[m] = {"train.lr": own if keep_own else shared}
                print(f"  {m}: own best lr {own} ({score[m, own]:.2f}), shared {shared} ({score[m, shared]:.2f})"
                      f" -> {chosen[m]['train.lr']}", flush=True)

        if args.stage in ("all", "settings"):
            jobs = []
            for m in args.methods:
                key, values = SETTINGS[m]
                jobs += [(m, {**base, "train.lr": chosen[m]["train.lr"], key: v}) for v in values]
            print(f"stage settings: {len(jobs)} runs", flush=True)
            results = _run_all(params, args.dataset, jobs, args.workers)
            report["settings"] = {"epochs": args.epochs, "runs": results}
            for m in args.methods:
                key, (paper, *_) = SETTINGS[m]
                mine = [r for r in results if r["method"] == m]
                best = max(mine, key=lambda r: r["best"])
                at_paper = next(r for r in mine if r["overrides"][key] == paper)
                chosen[m][key] = best["overrides"][key] if best["best"] - at_paper["best"] > args.tolerance else paper

        if args.stage in ("all", "convergence"):
            # a method the lr/settings stages did not choose for runs at params.yaml's own settings
            settings = {m: {k: v for k, v in chosen.get(m, {}).items() if k not in schedule(1)}
                        for m in args.methods}
            suffix = "" if args.dataset == "glyphs" else f", {args.dataset}"
            # the single schedule is the doubled run of the check at half of it, when that ran at the
            # same settings (training is deterministic): reused, not trained again
            previous = report.get("convergence", {}).get(f"{args.epochs // 2} epochs{suffix}", {})
            reused = {m: _as_single(m, {**schedule(args.epochs), **settings[m]}, previous[m])
                      for m in args.methods if args.epochs % 2 == 0 and m in previous
                      and {k: v for k, v in previous[m]["chosen"].items() if k not in schedule(1)} == settings[m]}
            jobs = [(m, {**schedule(e), **settings[m]}) for m in args.methods
                    for e in (args.epochs, 2 * args.epochs) if not (e == args.epochs and m in reused)]
            print(f"stage convergence: {args.epochs} and {2 * args.epochs} epochs"
                  + (f" ({', '.join(reused)} at {args.epochs}: the doubled run of the previous check)" if reused else ""),
                  flush=True)
            results = list(reused.values()) + _run_all(params, args.dataset, jobs, args.workers)
            key = f"{args.epochs} epochs{suffix}"
            convergence = report.setdefault("convergence", {})[key] = {}
            for m in args.methods:
                single, double = sorted((r for r in results if r["method"] == m), key=lambda r: r["overrides"]["train.epochs"])
                convergence[m] = {
                    "chosen": chosen.get(m, {}), "best": single["best"], "best_epoch": single["best_epoch"],
                    "last3_spread": single["last3_spread"], "plateaued": single["last3_spread"] <= 0.3,
                    "doubled_best": double["best"], "doubled_best_epoch": double["best_epoch"],
                    "doubling_gain": round(double["best"] - single["best"], 2),
                    "converged": abs(double["best"] - single["best"]) < 0.5,
                    "curve": single["val_r1"], "doubled_curve": double["val_r1"],
                }
                c = convergence[m]
                print(f"{m:18s} best {c['best']:.2f} @ {c['best_epoch']}, spread {c['last3_spread']:.2f}, "
                      f"doubled {c['doubled_best']:.2f} ({c['doubling_gain']:+.2f})", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
