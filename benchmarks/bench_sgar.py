"""Overhead of SGAR: the training step of Proxy-Anchor versus Proxy-Anchor + SGAR.

The step is the trainer's: a linear head 1280 -> 512 (EfficientNet-Lite0 features) on a batch of
150 of 1,000 classes, the criterion on the raw head output, backward and an Adam step over the
head, the proxies and SGAR's projector (and direction bank). Two batch shapes: labels drawn at
random (the authors' random sampler: ~140 classes per batch, the most proxies to project) and 30
classes x 5 (the shape of this trainer's m-per-class sampler). Timed on 2 threads for Proxy-Anchor
(params.yaml's settings) and for SGAR with N = 5: the paper variant with the paper's tau 0.05 and
with every sample gated (``tau: null``, the most synthesis a step can do), the code variant with
every sample gated. After a few steps the proxies (at 100x the lr) gate nearly every sample with
tau 0.05 too (the recorded ``gated_fraction``). The setups are interleaved step by step, so a busy
machine slows all alike; the figure is the median over many steps of wall time and of process CPU
time (both threads; the load average is recorded). The loss alone (forward + backward on a
150 x 512 leaf) is timed the same way.

    python benchmarks/bench_sgar.py                 # 2 threads, ~2 minutes on idle cores
    python benchmarks/bench_sgar.py --threads 2 1   # also on the trainer's 1 thread
    python benchmarks/bench_sgar.py --steps 50      # quicker
Writes benchmarks/results/sgar.json (target: SGAR step <= 1.5 x the Proxy-Anchor step).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from dmlrepro.methods import build_criterion
from dmlrepro.training.heads import EmbeddingHead

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results/sgar.json"
IN_DIM, DIM, CLASSES, BATCH, N, THREADS = 1280, 512, 1000, 150, 5, 2
TARGET = 1.5


def batches(n: int, per_class: int | None, seed: int = 0):
    """Labels from 1,000 classes, drawn at random (per_class None) or per_class images of
    BATCH / per_class random classes; features = a class centre + noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, IN_DIM, generator=g)
    out = []
    for _ in range(n):
        if per_class is None:
            y = torch.randint(0, CLASSES, (BATCH,), generator=g)
        else:
            y = torch.randperm(CLASSES, generator=g)[: BATCH // per_class].repeat_interleave(per_class)
        out.append((centres[y] + 1.5 * torch.randn(BATCH, IN_DIM, generator=g), y))
    return out


def timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def setups(base: dict) -> dict:
    configs = {"proxy_anchor": base}
    for name, variant, tau in (("sgar_paper", "paper", 0.05), ("sgar_paper_all_gated", "paper", None),
                               ("sgar_code_all_gated", "code", None)):
        configs[name] = {**base, "augmenter": {"sgar": {"variant": variant, "N": N, "tau": tau}}}
    out = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        head = EmbeddingHead(IN_DIM, DIM)
        crit = build_criterion(cfg, CLASSES, DIM)
        groups = [{"params": head.parameters(), "lr": 1e-3}] + crit.param_groups(1e-3)
        out[name] = (head, crit, torch.optim.Adam(groups, 1e-3))
    return out


def bench(data, steps: int) -> tuple[dict, dict]:
    method = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]["proxy_anchor"]
    runs = setups({k: v for k, v in method.items() if k != "train"})
    names = list(runs)

    def step(name, i):
        head, crit, opt = runs[name]
        x, y = data[i % len(data)]
        loss = crit(head(x, normalize=False), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def loss_only(name, i):
        _, crit, _ = runs[name]
        x, y = data[i % len(data)]
        z = (x[:, :DIM] * 0.1).requires_grad_(True)
        crit(z, y).backward()

    results = {}
    for part, fn in (("step", step), ("loss_only", loss_only)):
        for i in range(10):  # warm-up
            for name in names:
                fn(name, i)
        times = {name: [] for name in names}
        for i in range(steps):
            order = names if i % 2 else names[::-1]  # alternate who goes first
            for name in order:
                times[name].append(timed(lambda: fn(name, i)))
        results[part] = {}
        for clock, col in (("wall", 0), ("cpu", 1)):
            med = {name: statistics.median(t[col] for t in times[name]) * 1e3 for name in names}
            results[part][clock] = {name: {"ms": round(med[name], 3), "ratio": round(med[name] / med["proxy_anchor"], 3)}
                                    for name in names}
        for name in names:
            print(f"{part:9s} {name:22s}" + "".join(
                f"  {clock} {results[part][clock][name]['ms']:7.2f} ms (x{results[part][clock][name]['ratio']:.3f})"
                for clock in ("wall", "cpu")))
    gated = {}  # the share of a batch each SGAR setup synthesises, after the timed steps
    for name in names[1:]:
        head, crit, _ = runs[name]
        with torch.no_grad():
            x, y = data[0]
            gated[name] = round(float(crit.gate(head(x, normalize=False), y).float().mean()), 3)
    return results, gated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, nargs="+", default=[THREADS],
                    help="torch threads, one benchmark each (the trainer's default is train.threads: 1)")
    args = ap.parse_args()
    results, gated, loads = {}, {}, {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape, per_class in (("random_labels", None), ("30_classes_x_5", 5)):
            print(f"-- {threads} thread(s), batch: {shape}")
            key = f"{threads}_threads/{shape}"
            results[key], gated[key] = bench(batches(20, per_class), args.steps)
            loads[key] = round(os.getloadavg()[0], 2)
    names = list(next(iter(results.values()))["step"]["wall"])
    record = {
        "what": "median time of one training step (head 1280->512 + loss + backward + Adam) and of the loss "
                "alone (forward + backward), Proxy-Anchor vs Proxy-Anchor + SGAR (N = 5): paper variant with "
                "tau 0.05 and with every sample gated (tau null), code variant with every sample gated",
        "batch": BATCH, "classes": CLASSES, "embedding_dim": DIM, "in_dim": IN_DIM, "N": N,
        "threads": args.threads, "steps": args.steps, "gated_fraction_after_the_timed_steps": gated,
        "target": f"SGAR step <= {TARGET} x Proxy-Anchor step",
        "meets_target": {key: {clock: {name: res["step"][clock][name]["ratio"] <= TARGET for name in names[1:]}
                               for clock in ("wall", "cpu")} for key, res in results.items()},
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average_1min_after_each": loads,
        "results": results,
    }
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}; loads {loads} on {os.cpu_count()} CPUs; gated {gated}")


if __name__ == "__main__":
    main()
