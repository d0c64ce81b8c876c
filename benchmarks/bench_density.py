"""Overhead of DA (reconstructed): the training step of a base loss versus base + density term.

The step is the trainer's: a linear head 1280 -> 512 (EfficientNet-Lite0 features) on a batch of
128 (32 classes x 4, the m-per-class sampler's shape), the criterion on the raw head output,
backward and an Adam step. It is timed for contrastive, N-pair and triplet (params.yaml's
settings, semi-hard miner for triplet) without and with the regulariser (weight 1, eta 0.5), on
one thread, base and DA interleaved step by step so that a busy machine slows both alike; the
figure is the median over many steps, of wall time and of the thread's CPU time (which leaves out
waiting for a core on a shared machine; the load average is recorded). The loss alone (forward + backward on a 128 x 512 leaf,
no head) is timed the same way, to show the term's own cost.

    python benchmarks/bench_density.py                 # ~1 minute
    python benchmarks/bench_density.py --steps 100     # quicker
Writes benchmarks/results/density.json (target: base + DA step <= 1.1 x base step).
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
from dmlrepro.study.runs import criterion_config
from dmlrepro.training.heads import EmbeddingHead

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results/density.json"
IN_DIM, DIM, CLASSES, PER_CLASS = 1280, 512, 32, 4
DA = {"density": {"weight": 1.0, "eta": 0.5}}


def batches(n: int, seed: int = 0):
    """Clustered features: per batch, 32 class centres + noise (a miner finds real work)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        centres = torch.randn(CLASSES, IN_DIM, generator=g)
        y = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
        out.append((centres[y] + 1.5 * torch.randn(len(y), IN_DIM, generator=g), y))
    return out


def timed(fn) -> tuple[float, float]:
    """(wall, this thread's CPU) seconds: on a shared machine the CPU time leaves out the time the
    thread waited for a core (one torch thread computes in the calling thread)."""
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w0, time.thread_time() - c0


def bench(method: dict, steps: int, data) -> dict:
    torch.manual_seed(0)
    setups = {}
    for kind, cfg in (("base", method), ("da", {**method, "regularizer": DA})):
        head = EmbeddingHead(IN_DIM, DIM)
        setups[kind] = (head, build_criterion(cfg, CLASSES, DIM), torch.optim.Adam(head.parameters(), 1e-3))

    def step(kind, i):
        head, crit, opt = setups[kind]
        x, y = data[i % len(data)]
        loss = crit(head(x, normalize=False), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def loss_only(kind, i):
        _, crit, _ = setups[kind]
        x, y = data[i % len(data)]
        z = (x[:, :DIM] * 0.1).requires_grad_(True)
        crit(z, y).backward()

    out = {}
    for name, fn in (("step", step), ("loss_only", loss_only)):
        for i in range(10):  # warm-up
            fn("base", i), fn("da", i)
        times = {"base": [], "da": []}
        for i in range(steps):
            for kind in (("base", "da") if i % 2 else ("da", "base")):  # alternate who goes first
                times[kind].append(timed(lambda: fn(kind, i)))
        out[name] = {}
        for clock, col in (("wall", 0), ("cpu", 1)):
            base, da = (statistics.median(t[col] for t in times[k]) * 1e3 for k in ("base", "da"))
            out[name][clock] = {"base_ms": round(base, 3), "da_ms": round(da, 3), "ratio": round(da / base, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)
    methods = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]
    data = batches(20)
    results = {}
    for name in ("contrastive", "npair", "triplet"):
        results[name] = bench(criterion_config(methods[name]), args.steps, data)
        for part in ("step", "loss_only"):
            print(f"{name:12s} {part:9s}" + "".join(
                f"  {clock} {r['base_ms']:6.2f} -> {r['da_ms']:6.2f} ms (x{r['ratio']:.3f})"
                for clock, r in results[name][part].items()))
    load = os.getloadavg()[0]
    record = {
        "what": "median wall time of one training step (head 1280->512 + loss + backward + Adam) and of "
                "the loss alone (forward + backward), base loss vs base + DA (reconstructed) weight 1 eta 0.5",
        "batch": CLASSES * PER_CLASS, "classes_per_batch": CLASSES, "embedding_dim": DIM, "in_dim": IN_DIM,
        "threads": 1, "steps": args.steps, "target": "step ratio <= 1.1",
        "meets_target": {clock: all(r["step"][clock]["ratio"] <= 1.1 for r in results.values())
                         for clock in ("wall", "cpu")},
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average_1min": round(load, 2),
        "results": results,
    }
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}; load {load:.1f} on {os.cpu_count()} CPUs; target met: {record['meets_target']}")


if __name__ == "__main__":
    main()
