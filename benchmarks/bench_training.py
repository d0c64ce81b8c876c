"""Where a training job's CPU time goes, per job kind of the default build, beside the FLOP floor.

For each run (default: seed 0 of every method of params.yaml's default tables, on glyphs), the
frozen regime is trained through the shared loop (:mod:`dmlrepro.training.loop`) at its own
schedule, with the phases timed in process CPU seconds (one torch thread, as the pipeline's jobs):

  start-up      importing the package, loading the cached features, building head/loss/optimizer
  embed         the head's forward pass of each step (and the class statistics' refreshes)
  loss          the criterion: miner, loss, a method's synthesis or regulariser
  backward      backward pass, clipping and the optimizer step
  validation    the per-epoch validation search (every epoch: the selection rule)
  checkpoint    writing the resume state after every epoch
  mlflow        the live record (a fresh sqlite store per run), start to finish
  evaluate      the evaluation job: the test search of the selected epoch (no NMI unless asked)

The floor: the step's matrix products (the head's forward and weight gradient, 4 x B x D_in x D
FLOP a step) and the validation search (2 x N^2 x D FLOP an epoch), at this machine's measured
single-thread matmul rate. Writes benchmarks/results/training.json (``--out``); ``--label`` names the
entry (e.g. before / after) so two code states sit side by side in one file.

    python benchmarks/bench_training.py --label before                     # every default method
    python benchmarks/bench_training.py --methods multi_similarity sgar --epochs 5 --label quick
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

T_IMPORT = time.process_time()
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dmlrepro.paths import checkpoint_file  # noqa: E402
from dmlrepro.study import load_study  # noqa: E402
from dmlrepro.study.params import load_params  # noqa: E402
from dmlrepro.threads import set_threads  # noqa: E402
from dmlrepro.training import frozen, loop  # noqa: E402

IMPORT_SECONDS = time.process_time() - T_IMPORT
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results/training.json"
PHASES = ("start-up", "embed", "loss", "backward", "validation", "checkpoint", "mlflow", "evaluate")


class Clock:
    """Process CPU seconds per phase; nested phases are charged to the innermost one only."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.stack: list[tuple[str, float]] = []

    @contextmanager
    def phase(self, name: str):
        now = time.process_time()
        if self.stack:  # pause the enclosing phase
            outer, since = self.stack[-1]
            self.seconds[outer] += now - since
        self.stack.append((name, now))
        try:
            yield
        finally:
            name, since = self.stack.pop()
            now = time.process_time()
            self.seconds[name] += now - since
            if self.stack:
                self.stack[-1] = (self.stack[-1][0], now)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return timed


def matmul_gflops(trials: int = 10, seconds: float = 0.2) -> float:
    """This machine's single-thread float32 matmul rate (GFLOP/s), 128 x 1280 @ 1280 x 512: the best
    of short trials in process CPU time (another process on the core does not count)."""
    set_threads(1)
    a, b = torch.randn(128, 1280), torch.randn(1280, 512)
    best = 0.0
    for _ in range(trials):
        n, t0 = 0, time.process_time()
        while time.process_time() - t0 < seconds:
            a @ b
            n += 1
        best = max(best, 2 * 128 * 1280 * 512 * n / (time.process_time() - t0) / 1e9)
    return best


def profile(params: dict, run, epochs: int | None, work: Path) -> dict:
    clock = Clock()
    device = "cpu"
    with clock.phase("start-up"):
        set_threads(run.settings.threads)
        data = frozen.CachedFeatures(run.features.path(params), run, False, device)
        loop.seed_everything(run.seed)
        regime = frozen.FrozenRegime(run, data, device)
    if epochs:  # a shorter schedule for a quick look: costs per step and per epoch stay comparable
        from dataclasses import replace
        regime.train = replace(regime.train, epochs=epochs)
    steps_per_epoch = len(list(regime.sampler.batches(1))) if hasattr(regime.sampler, "batches") else None
    criterion_forward = regime.criterion.forward
    regime.criterion.forward = clock.wrap("loss", criterion_forward)
    regime.head.forward = clock.wrap("embed", regime.head.forward)
    regime.apply_gradients = clock.wrap("backward", regime.apply_gradients)
    regime.scores = clock.wrap("validation", regime.scores)
    save = loop.save_checkpoint
    loop.save_checkpoint = clock.wrap("checkpoint", save)
    tracker = _tracker(params, run, work, clock)
    try:
        out = work / "run"
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.process_time()
        loop.train_loop(regime, out, checkpoint_file(work / "ckpt", run.hash, False), tracker)
        train_seconds = time.process_time() - t0
    finally:
        loop.save_checkpoint = save
    with clock.phase("evaluate"):
        _evaluate(params, run, out, device)
    in_dim, dim, batch = regime.in_dim, regime.out_dim, regime.train.batch_size
    n_val = len(data.val_y)
    steps = (steps_per_epoch or 0) * regime.train.epochs
    return {"run": run.id, "epochs": regime.train.epochs, "steps": steps, "batch_size": batch,
            "cpu_seconds": {k: round(v, 2) for k, v in clock.seconds.items()},
            "train_loop_cpu_seconds": round(train_seconds, 2),
            "flop": {"steps": 4 * batch * in_dim * dim * steps, "validation": 2 * n_val ** 2 * dim * regime.train.epochs}}


def _tracker(params: dict, run, work: Path, clock: Clock):
    from dmlrepro.reporting.training_record import TrainingTracker

    store = {**params, "mlflow": {**params["mlflow"], "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
                                  "artifact_root": str(work / "mlartifacts")}}
    tracker = TrainingTracker(store, run)
    for name in ("start", "log_epoch", "finish"):
        setattr(tracker, name, clock.wrap("mlflow", getattr(tracker, name)))
    return tracker


def _evaluate(params: dict, run, out: Path, device: str) -> None:
    from dmlrepro.stages.evaluate import evaluate_run
    from dmlrepro.study.runs import RunPaths

    evaluate_run(run, RunPaths.of(params, run, out), device)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--methods", nargs="+", help="methods (default: every method of the default tables, on glyphs)")
    ap.add_argument("--dataset", default="glyphs")
    ap.add_argument("--epochs", type=int, help="a shorter schedule (default: each run's own)")
    ap.add_argument("--label", default="current", help="the entry this measurement is stored under")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    study = load_study(params)
    tables, sweeps = study.selected()
    runs = {}
    for run in study.runs_of(tables, sweeps):
        if run.dataset == args.dataset and run.seed in (0, None) and run.settings.train is not None:
            runs.setdefault(run.name, run)
    if args.methods:
        runs = {name: r for name, r in runs.items() if r.method in args.methods or name in args.methods}
    rate = matmul_gflops()
    results = {}
    for name, run in sorted(runs.items()):
        if not run.features.path(params).is_file():
            print(f"skip {run.id}: features missing (dmlrepro extract --features {run.features.id})", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            r = profile(params, run, args.epochs, Path(tmp))
        r["floor_cpu_seconds"] = {k: round(v / (rate * 1e9), 2) for k, v in r["flop"].items()}
        results[name] = r
        print(f"{name:32s} " + " ".join(f"{k} {v:.1f}" for k, v in r["cpu_seconds"].items()) +
              f" | floor steps {r['floor_cpu_seconds']['steps']:.1f} val {r['floor_cpu_seconds']['validation']:.1f}",
              file=sys.stderr)
    existing = json.loads(args.out.read_text()) if args.out.is_file() else {}
    existing[args.label] = {"machine": platform.processor() or platform.machine(), "matmul_gflops_1_thread": round(rate, 1),
                            "import_cpu_seconds": round(IMPORT_SECONDS, 2), "epochs_override": args.epochs,
                            "date": time.strftime("%Y-%m-%d %H:%M"), "runs": results}
    args.out.write_text(json.dumps(existing, indent=1) + "\n")
    print(f"wrote {args.out} [{args.label}]", file=sys.stderr)


if __name__ == "__main__":
    main()
