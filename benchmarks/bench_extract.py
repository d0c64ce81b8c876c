"""Benchmark the feature-extraction engines: eager torch, traced torch, ONNX Runtime, OpenVINO.

The same images go through each engine (efficientnet_lite0, 112 px, batch 64, 2 threads):
images/s (pure inference: the pixels are decoded beforehand), the start-up time of
compile_for_inference (ONNX export, session build and the check against eager torch), the
largest |feature difference| from eager torch, and the effect on leave-one-out Recall@1 of the
L2-normalised features (labels = characters, so neighbours must be the same character in other
fonts), on MAP@R, and how many queries change their nearest neighbour.

Images: the centre views of a prepared glyphs dataset (data/glyphs/manifest.csv) when there is
one, else glyphs rendered here: 41 common ideographs in the first outline fonts of ./fonts that
draw them all (distinct files, in path order; lacking those, Latin letters in /usr/share/fonts).

OpenVINO runs twice: with INFERENCE_PRECISION_HINT f32 (what extract uses) and with the CPU
plugin's default precision (bf16 on CPUs that have it; never used by extract: it fails the check).

Engines are timed in interleaved rounds (the machine may be shared); the fastest round counts,
all are kept, with the process CPU time per image (less sensitive to other jobs, though
torch's OpenMP threads spin-wait on a busy machine). The load average is recorded.

    python benchmarks/bench_extract.py               # ~1.5 minutes on 2 idle cores
    python benchmarks/bench_extract.py --images 320 --rounds 2
Writes benchmarks/results/extract.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
# common ideographs every CJK font draws (41 classes)
IDEOGRAPHS = "一二三四五六七八九十人大小山川日月水火木金土上下中口田目手心天子女男力生年出入本白"
LATIN = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghknqrty"


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ------------------------------------------------------------------------------------- images


def prepared_images(dataset: Path, n: int, size: int):
    """Centre views of the first `n` images of a prepared dataset (labels: its classes)."""
    from dmlrepro.backbones.extract import centre_view, load_rgb, read_manifest_rows

    rows, _, _ = read_manifest_rows(dataset)
    rows = rows[:n]
    pixels = np.stack([np.asarray(centre_view(load_rgb(r["path"]), size), dtype=np.uint8) for r in rows])
    labels = np.asarray([r["label"] for r in rows], dtype=np.int64)
    return pixels, labels, f"prepared dataset {dataset} (first {len(rows)} manifest rows)"


def _font_files(chars: str, font_dirs: list[Path], max_fonts: int) -> list[Path]:
    """Outline fonts that map every character of `chars`, one per distinct file content."""
    import hashlib

    from fontTools.ttLib import TTFont

    from dmlrepro.data.glyphs import FONT_SUFFIXES

    found, seen = [], set()
    for d in font_dirs:
        for path in sorted(p for p in d.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file()):
            if path.suffix.lower() in (".ttc", ".otc"):  # collections: face 0 only would be arbitrary
                continue
            try:
                tt = TTFont(str(path), lazy=True)
                ok = ("glyf" in tt or "CFF " in tt) and all(ord(c) in (tt.getBestCmap() or {}) for c in chars)
                tt.close()
            except Exception:  # noqa: BLE001 - unreadable fonts are skipped
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if ok else None
            if ok and digest not in seen:
                seen.add(digest)
                found.append(path)
            if len(found) == max_fonts:
                return found
    return found


def rendered_images(n: int, size: int):
    """Glyphs rendered from the fonts at hand: class = character, images = fonts."""
    from dmlrepro.data.glyphs import render_glyph

    for chars, dirs in ((IDEOGRAPHS, [REPO / "fonts"]), (LATIN, [Path("/usr/share/fonts")])):
        n_fonts = max(2, -(-n // len(chars)))
        fonts = _font_files(chars, [d for d in dirs if d.is_dir()], n_fonts)
        if len(fonts) >= 2:
            break
    else:
        raise SystemExit("no two fonts draw the benchmark characters; run `make fonts` or install fonts-dejavu")
    pixels, labels = [], []
    for font in fonts:
        for label, char in enumerate(chars):
            img = render_glyph(font, 0, char, size)
            if img is not None:
                pixels.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
                labels.append(label)
    pixels, labels = np.stack(pixels[:n]), np.asarray(labels[:n], dtype=np.int64)
    script = "ideographs" if chars is IDEOGRAPHS else "Latin letters"
    return pixels, labels, f"rendered: {len(set(labels.tolist()))} {script} x {len(fonts)} fonts"


# ------------------------------------------------------------------------------------ engines


def build_engines(backbone, threads: int):
    """{name: (runner, start-up seconds)}: eager, traced, onnxruntime, openvino f32 / default."""
    from dmlrepro.backbones import engines
    from dmlrepro.backbones.inference import InferenceRunner, compile_for_inference

    out = {}

    def timed(name, make):
        t = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                runner = make()
        except Exception as exc:  # noqa: BLE001
            print(f"{name}: not available ({exc})", flush=True)
            return
        for w in caught:
            print(f"{name}: warning: {w.message}", flush=True)
        out[name] = (runner, time.perf_counter() - t)

    module = backbone.module
    timed("torch-eager", lambda: InferenceRunner(module, "cpu", "eager"))
    timed("torch-traced", lambda: compile_for_inference(backbone, "cpu", engine="torch", threads=threads))
    timed("onnxruntime", lambda: compile_for_inference(backbone, "cpu", engine="onnxruntime", threads=threads))
    timed("openvino-f32", lambda: compile_for_inference(backbone, "cpu", engine="openvino", threads=threads))

    def openvino_default():  # unchecked: this one would fail compile_for_inference's check
        with tempfile.TemporaryDirectory() as tmp:
            example = torch.rand(2, 3, backbone.input_size, backbone.input_size) * 255
            path = engines.export_onnx(backbone.module.to("cpu"), example, Path(tmp) / "m.onnx")
            return engines.OpenVINORunner(path, threads=threads, precision=None)

    timed("openvino-default", openvino_default)
    expected = {"torch-traced": "jit-trace-freeze", "onnxruntime": "onnxruntime", "openvino-f32": "openvino-f32"}
    for name, (runner, _) in out.items():
        if name in expected and runner.mode != expected[name]:
            print(f"{name}: fell back to {runner.mode}", flush=True)
    return out


def embed(runner, batches) -> tuple[np.ndarray, float, float]:
    """Features of all batches, wall and CPU seconds (after one warm-up batch)."""
    runner(batches[0])
    t, c = time.perf_counter(), _cpu_s()
    feats = [runner(b) for b in batches]
    return torch.cat(feats).numpy(), time.perf_counter() - t, _cpu_s() - c


def retrieval(feats: np.ndarray, labels: np.ndarray) -> dict:
    """Leave-one-out Recall@1 and MAP@R of the L2-normalised features."""
    from dmlrepro.evaluation.metrics import evaluate_retrieval

    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    res = evaluate_retrieval(x.astype(np.float32), labels, ks=[1], compute_nmi=False)
    return {"recall@1": res["recall@1"], "map@r": res["map@r"]}


def nearest(feats: np.ndarray) -> np.ndarray:
    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=640)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the fastest counts")
    p.add_argument("--dataset", type=Path, default=REPO / "data" / "glyphs")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "extract.json")
    args = p.parse_args()

    from dmlrepro.backbones import create_backbone
    from dmlrepro.backbones.extract import to_batch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t = time.perf_counter()
    if (args.dataset / "manifest.csv").is_file():
        pixels, labels, source = prepared_images(args.dataset, args.images, args.size)
    else:
        pixels, labels, source = rendered_images(args.images, args.size)
    print(f"images: {len(pixels)} at {args.size}px, {source} ({time.perf_counter() - t:.1f} s)", flush=True)
    batches = [to_batch(pixels[i:i + args.batch_size]) for i in range(0, len(pixels), args.batch_size)]

    backbone = create_backbone("efficientnet_lite0", input_size=args.size)
    runners = build_engines(backbone, args.threads)

    rates: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    feats: dict[str, np.ndarray] = {}
    for rnd in range(args.rounds):
        order = list(runners) if rnd % 2 == 0 else list(reversed(runners))
        for name in order:
            f, wall, cpu_s = embed(runners[name][0], batches)
            feats.setdefault(name, f)
            rates[name].append(len(pixels) / wall)
            cpu[name].append(cpu_s / len(pixels) * 1000)
            print(f"round {rnd + 1} {name:18} {rates[name][-1]:7.1f} images/s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)

    reference = feats["torch-eager"]
    scale = float(np.abs(reference).max())
    near_ref = nearest(reference)
    engines_report = {}
    for name, (runner, startup) in runners.items():
        f = feats[name]
        diff = np.abs(f - reference)
        engines_report[name] = {
            "mode": runner.mode,
            "version": getattr(runner, "version", None),
            "images_per_s": max(rates[name]),
            "images_per_s_all": rates[name],
            "cpu_ms_per_image": min(cpu[name]),
            "startup_s": startup,
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(diff.max()) / scale,
            "mean_abs_diff": float(diff.mean()),
            "startup_check_max_abs_diff": getattr(runner, "max_abs_diff", None),
            **retrieval(f, labels),
            "nearest_neighbour_changes": int((nearest(f) != near_ref).sum()),
        }
        if name == "openvino-default":
            engines_report[name]["precision"] = runner.precision
    base = engines_report["torch-eager"]
    for r in engines_report.values():
        r["speedup_vs_eager"] = r["images_per_s"] / base["images_per_s"]
        r["recall@1_change"] = r["recall@1"] - base["recall@1"]
        r["map@r_change"] = r["map@r"] - base["map@r"]
    if "torch-traced" in engines_report:
        traced = engines_report["torch-traced"]["images_per_s"]
        for r in engines_report.values():
            r["speedup_vs_traced"] = r["images_per_s"] / traced

    report = {
        "config": {
            "backbone": "efficientnet_lite0",
            "input_size": args.size,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "images": len(pixels),
            "classes": int(len(np.unique(labels))),
            "rounds": args.rounds,
            "images_source": source,
            "feature_scale_max_abs": scale,
        },
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": sys.version.split()[0], "torch": torch.__version__},
        "engines": engines_report,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{'engine':18}{'mode':>18}{'images/s':>10}{'x eager':>9}{'start s':>9}{'max|diff|':>11}"
          f"{'R@1':>8}{'MAP@R':>8}{'NN chg':>8}")
    for name, r in engines_report.items():
        print(f"{name:18}{r['mode']:>18}{r['images_per_s']:10.1f}{r['speedup_vs_eager']:9.2f}{r['startup_s']:9.2f}"
              f"{r['max_abs_diff']:11.2e}{r['recall@1']:8.4f}{r['map@r']:8.4f}{r['nearest_neighbour_changes']:8d}")
    print(f"feature scale (max |eager feature|): {scale:.3f}; report: {args.out}")


if __name__ == "__main__":
    main()
