"""Time `dmlrepro prepare` of a Stanford Online Products-sized copy (the largest official release).

Writes an SOP-shaped fixture in the official layout -- Ebay_train.txt / Ebay_test.txt with the
release's 59,551 / 60,502 images of 11,318 / 11,316 classes in 12 `<name>_final/` super-class
folders -- whose 120,053 images are tiny 8x8 JPEGs (the bytes of a few pre-encoded ones, so
writing takes seconds), then times the registered `sop` prepare on it (parse, open+verify every
image in a process pool, write manifest.csv and info.json). Also timed on their own: the parse
and the image check.

    python benchmarks/bench_prepare_sop.py                  # fixture in a temporary folder
    python benchmarks/bench_prepare_sop.py --dir /tmp/sop   # kept there (and reused next time)
Writes benchmarks/results/prepare_sop.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = (59551, 11318)   # images, classes of Ebay_train.txt
TEST = (60502, 11316)    # ... of Ebay_test.txt
SUPER = ["bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug", "sofa",
         "stapler", "table", "toaster"]


def tiny_jpegs(n: int = 16) -> list[bytes]:
    from PIL import Image

    out = []
    for k in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), ((53 * k) % 256, (97 * k + 40) % 256, (151 * k + 80) % 256)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def write_fixture(root: Path) -> float:
    """The SOP-shaped copy under ``root`` (skipped when a complete one is there); seconds taken."""
    marker = root / ".complete"
    if marker.is_file():
        return 0.0
    t0 = time.perf_counter()
    if root.exists():
        shutil.rmtree(root)
    for s in SUPER:
        (root / f"{s}_final").mkdir(parents=True)
    blobs = tiny_jpegs()
    image_id, class_id = 0, 0
    n_classes = TRAIN[1] + TEST[1]
    for name, (n_img, n_cls) in (("Ebay_train.txt", TRAIN), ("Ebay_test.txt", TEST)):
        lines = ["image_id class_id super_class_id path"]
        base, extra = divmod(n_img, n_cls)   # `extra` classes get one more image
        for c in range(n_cls):
            class_id += 1
            super_id = (class_id - 1) * len(SUPER) // n_classes + 1
            product = 100000000000 + class_id * 7919
            for j in range(base + (c < extra)):
                image_id += 1
                rel = f"{SUPER[super_id - 1]}_final/{product}_{j}.JPG"
                with open(root / rel, "wb") as fh:
                    fh.write(blobs[class_id % len(blobs)])
                lines.append(f"{image_id} {class_id} {super_id} {rel}")
        (root / name).write_text("\n".join(lines) + "\n")
    marker.touch()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="where the fixture is written (kept); default: a temporary folder")
    ap.add_argument("--workers", type=int, default=None, help="image-check processes (default: all cores)")
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks/results/prepare_sop.json")
    args = ap.parse_args()

    from dmlrepro.data import DATASETS
    from dmlrepro.data.official import check_images
    from dmlrepro.data.sop import parse

    tmp = Path(tempfile.mkdtemp(prefix="bench_sop_"))
    root = args.dir or tmp / "Stanford_Online_Products"
    try:
        gen_s = write_fixture(root)
        print(f"fixture: {root} ({'written in %.1f s' % gen_s if gen_s else 'reused'})", file=sys.stderr)
        prepare = DATASETS.get("sop")
        cfg = {"kind": "sop", "root": str(root), "workers": args.workers}
        t0 = time.perf_counter()
        info = prepare(cfg, tmp / "sop")
        seconds = time.perf_counter() - t0
        # the phases on their own
        t0 = time.perf_counter()
        parsed = parse(root)
        parse_s = time.perf_counter() - t0
        workers = args.workers or os.cpu_count() or 1
        paths = [str(root / r.path) for r in parsed.records]
        t0 = time.perf_counter()
        bad = check_images(paths, workers, "image check")
        check_s = time.perf_counter() - t0
        assert not bad, list(bad.items())[:3]
        result = {
            "images": info["counts"]["total"]["images"],
            "classes": info["counts"]["total"]["classes"],
            "seconds": round(seconds, 2),
            "cpu_count": os.cpu_count(),
            "workers": workers,
            "phases_s": {"parse": round(parse_s, 2), "image_check": round(check_s, 2)},
            "images_per_s": round(info["counts"]["total"]["images"] / seconds),
            "fixture_written_s": round(gen_s, 1) if gen_s else None,
            "image_bytes": len(tiny_jpegs()[0]),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "machine": platform.machine(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
