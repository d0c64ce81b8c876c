"""Extract and cache frozen-backbone features for every image of a prepared dataset.

Every image gets one deterministic centre view (view 0); training images also get `train_views`
augmented views (random resized crop + flip) seeded by (`seed`, manifest row), so re-extraction
gives identical arrays on the same machine. Heads train on these cached features and are evaluated
on view 0, so the backbone runs once per dataset and settings, not once per run.

The manifest is validated, and every image checked, before the backbone is built. Views use PIL
only (no torchvision). The output is one uncompressed `.npz`, written atomically: per split,
float16 features (views, n, D), labels and manifest rows, plus a JSON `meta` record.

The protocol, the view transforms, the input size and the `.npz` layout: docs/backbones.md.
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_path
from . import compile_for_inference, create_backbone, resolve_device, sha256_file
from .engines import check_engine
from ..errors import DmlReproError

CENTRE_CROP_FRACTION = 224 / 256  # centre crop of an image resized to size*256/224 on its short side
ASPECT_RANGE = (3 / 4, 4 / 3)
TRAIN_SPLIT = "train"
DEFAULTS = {
    "batch_size": 64,
    "train_views": 2,
    "crop_scale": [0.5, 1.0],
    "flip": True,
    "seed": 0,
    "threads": 2,
    "input_size": None,
    "engine": "auto",  # auto | torch | onnxruntime | openvino: an execution detail, like threads
}


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def read_manifest_rows(dataset_dir: Path) -> tuple[list[dict], dict[str, list[int]], Path]:
    """Validated manifest rows {path (resolved), label, split} in file order, the row indices of
    each split (splits in dmlrepro.data.manifest.SPLITS order), and the manifest file.

    Every listed image must exist (checked up front, before the backbone is built).
    """
    from ..data.manifest import read_manifest

    manifest = read_manifest(dataset_dir, dataset=dataset_dir.name, check_files=True)
    rows = [
        {"path": manifest.image_path(i), "label": int(manifest.labels[i]), "split": manifest.splits[i]}
        for i in range(len(manifest))
    ]
    splits = {split: manifest.indices(split).tolist() for split in manifest.split_names()}
    return rows, splits, manifest.file


# --------------------------------------------------------------------------------------------
# Images and views
# --------------------------------------------------------------------------------------------


def load_rgb(path: Path) -> Image.Image:
    """Decode an image as RGB (grayscale repeated, transparency composited onto white)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DmlReproError(
            f"cannot read image {str(path)!r} ({exc}); the prepared dataset is damaged or incomplete: "
            "re-run `dmlrepro prepare` for this dataset"
        ) from None


def centre_view(img: Image.Image, size: int) -> Image.Image:
    """Deterministic evaluation view: identity for size x size images, else resize + centre crop."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    side = min(w, h) * CENTRE_CROP_FRACTION  # the crop, in source pixels
    left, top = (w - side) / 2.0, (h - side) / 2.0
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def random_resized_box(
    width: int, height: int, rng: np.random.Generator, scale: Sequence[float], ratio: Sequence[float] = ASPECT_RANGE
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params with numpy: (left, top, w, h) of the crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    # fallback: central crop with the aspect ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def augmented_view(
    img: Image.Image, size: int, rng: np.random.Generator, crop_scale: Sequence[float] = (0.5, 1.0), flip: bool = True
) -> Image.Image:
    """Random resized crop (area fraction in crop_scale, aspect 3/4..4/3) to size x size, then a
    horizontal flip with probability 1/2 if `flip` (the coin is drawn either way, so switching
    `flip` off leaves the crops unchanged)."""
    left, top, w, h = random_resized_box(img.size[0], img.size[1], rng, crop_scale)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5 and flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def view_rng(seed: int, row: int) -> np.random.Generator:
    """The augmentation generator of one image: a function of (seed, manifest row) only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(row)]))


def image_views(img: Image.Image, size: int, n_aug: int, rng: np.random.Generator, crop_scale, flip) -> list[np.ndarray]:
    """[centre view, n_aug augmented views] as uint8 (size, size, 3) arrays."""
    views = [centre_view(img, size)]
    views += [augmented_view(img, size, rng, crop_scale, flip) for _ in range(n_aug)]
    return [np.asarray(v, dtype=np.uint8) for v in views]


def to_batch(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) arrays -> float32 (B, 3, H, W) 0..255 tensor in channels_last memory."""
    nhwc = torch.from_numpy(np.stack(arrays))
    return nhwc.permute(0, 3, 1, 2).float()


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _extract_settings(cfg: dict) -> dict:
    cfg = {**DEFAULTS, **{k: v for k, v in (cfg or {}).items() if v is not None or k == "input_size"}}
    try:
        batch_size, train_views = int(cfg["batch_size"]), int(cfg["train_views"])
        threads, seed = int(cfg["threads"]), int(cfg["seed"])
        crop_scale = [float(x) for x in cfg["crop_scale"]]
        input_size = None if cfg.get("input_size") is None else int(cfg["input_size"])
    except (TypeError, ValueError) as exc:
        raise DmlReproError(f"extract settings: {exc}; check the `extract` section of params.yaml") from None
    if batch_size < 1:
        raise DmlReproError(f"extract.batch_size must be >= 1, got {batch_size}")
    if train_views < 0:
        raise DmlReproError(f"extract.train_views must be >= 0, got {train_views}")
    if threads < 1:
        raise DmlReproError(f"extract.threads must be >= 1, got {threads}")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise DmlReproError(f"extract.crop_scale must be [low, high] with 0 < low <= high <= 1, got {cfg['crop_scale']}")
    if input_size is not None and input_size < 32:
        raise DmlReproError(f"extract.input_size must be >= 32, got {input_size}")
    engine = check_engine(cfg["engine"])  # a DmlReproError naming extract.engine and the allowed values
    return {
        "batch_size": batch_size,
        "train_views": train_views,
        "crop_scale": crop_scale,
        "flip": bool(cfg["flip"]),
        "seed": seed,
        "threads": threads,
        "input_size": input_size,
        "engine": engine,
    }


def extract_features(
    dataset_dir: Path,
    backbone_cfg: dict,
    extract_cfg: dict,
    out_path: Path,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Extract features of every manifest image into `out_path` (.npz); return a summary dict.

    backbone_cfg: {name, weights}; extract_cfg: {batch_size=64, train_views=2, crop_scale=[0.5, 1],
    flip=True, seed=0, threads=2, input_size=None, engine="auto"} (engine: see compile_for_inference).
    Nothing is written unless extraction succeeds.
    """
    dataset_dir, out_path = Path(dataset_dir), Path(out_path)
    settings = _extract_settings(extract_cfg)
    rows, splits, manifest = read_manifest_rows(dataset_dir)

    size = settings["input_size"]
    if size is None:
        first = rows[0]["path"]
        w, h = load_rgb(first).size
        if w != h:
            raise DmlReproError(
                f"the first image {str(first)!r} is {w}x{h}, not square, so the input size is ambiguous; "
                "set `extract.input_size` (e.g. 224) in params.yaml"
            )
        size = w

    device = resolve_device(device)
    name = (backbone_cfg or {}).get("name", "efficientnet_lite0")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings["threads"])
    try:
        backbone = create_backbone(name, weights=(backbone_cfg or {}).get("weights"), input_size=size,
                                   pooling=(backbone_cfg or {}).get("pooling"))
        runner = compile_for_inference(backbone, device, engine=settings["engine"], threads=settings["threads"])
        arrays, seconds, n_views = _run(rows, splits, size, settings, backbone.feature_dim, runner, progress)
    finally:
        torch.set_num_threads(previous_threads)

    rate = n_views / seconds if seconds > 0 else float("nan")
    views = {split: 1 + settings["train_views"] if split == TRAIN_SPLIT else 1 for split in splits}
    meta = {
        "backbone": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "input_size": size,
        "feature_dim": backbone.feature_dim,
        "normalisation": backbone.normalisation,
        "pooling": backbone.pooling,
        "splits": {split: len(idx) for split, idx in splits.items()},
        "views": views,
        "train_views": settings["train_views"],
        "crop_scale": settings["crop_scale"],
        "flip": settings["flip"],
        "seed": settings["seed"],
        "manifest_sha256": sha256_file(manifest),
        "dtype": "float16",
        "batch_size": settings["batch_size"],
        "threads": settings["threads"],
        "device": device,
        "engine": settings["engine"],  # requested; `inference` is the engine used
        "inference": runner.mode,
        "inference_version": runner.version,
        "engine_max_abs_diff": float(f"{runner.max_abs_diff:.3g}"),  # vs eager torch, on a random batch
        "torch": torch.__version__,
        "images_per_s": round(rate, 2),
        "seconds": round(seconds, 3),
    }
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
            np.savez(fh, **arrays)

    summary = {
        "dataset_dir": str(dataset_dir),
        "out_path": str(out_path),
        "images": len(rows),
        "views": n_views,
        **{k: meta[k] for k in ("backbone", "input_size", "feature_dim", "splits", "device", "inference", "seconds")},
        "views_per_split": views,
        "images_per_s": meta["images_per_s"],
    }
    print(
        f"extracted {n_views} views of {len(rows)} images with {backbone.name} at {size}px on {device} "
        f"({runner.mode}): {rate:.1f} images/s -> {out_path}",
        file=sys.stderr,
    )
    return summary


def _run(rows, splits, size, settings, dim, runner, progress) -> tuple[dict, float, int]:
    """Decode, view and embed every image; return the npz arrays, seconds and the number of views."""
    from tqdm import tqdm

    arrays: dict[str, np.ndarray] = {}
    jobs: list[tuple[np.ndarray, int, int]] = []  # (feature array, view, position) per batch item
    for split, idx in splits.items():
        n_aug = settings["train_views"] if split == TRAIN_SPLIT else 0
        arrays[f"{split}_features"] = np.zeros((1 + n_aug, len(idx), dim), dtype=np.float16)
        arrays[f"{split}_labels"] = np.asarray([rows[i]["label"] for i in idx], dtype=np.int64)
        arrays[f"{split}_rows"] = np.asarray(idx, dtype=np.int64)
    total = sum(len(idx) * arrays[f"{s}_features"].shape[0] for s, idx in splits.items())

    batch_pixels: list[np.ndarray] = []

    def flush() -> None:
        feats = runner(to_batch(batch_pixels)).numpy()
        if not np.isfinite(feats).all():
            raise DmlReproError("the backbone produced non-finite features; check the weights file")
        for (target, view, pos), f in zip(jobs, feats):
            target[view, pos] = f
        bar.update(len(batch_pixels))
        batch_pixels.clear()
        jobs.clear()

    start = time.perf_counter()
    with tqdm(total=total, unit="img", desc="extract", disable=not progress, file=sys.stderr,
              mininterval=0.5 if sys.stderr.isatty() else 15.0) as bar:  # sparse lines in log files
        for split, idx in splits.items():
            target = arrays[f"{split}_features"]
            n_aug = target.shape[0] - 1
            for pos, row_index in enumerate(idx):
                img = load_rgb(rows[row_index]["path"])
                rng = view_rng(settings["seed"], row_index)
                for view, pixels in enumerate(image_views(img, size, n_aug, rng, settings["crop_scale"], settings["flip"])):
                    batch_pixels.append(pixels)
                    jobs.append((target, view, pos))
                    if len(batch_pixels) == settings["batch_size"]:
                        flush()
        if batch_pixels:
            flush()
    return arrays, time.perf_counter() - start, total


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class FeatureSet(dict):
    """The arrays of a features file; a missing `<split>_...` key raises a DmlReproError."""

    path: Path

    def splits(self) -> list[str]:
        return [k[: -len("_features")] for k in self if k.endswith("_features")]

    def __missing__(self, key: str):
        raise DmlReproError(
            f"{self.path} has no {key!r}; its splits are {self.splits()} "
            f"(re-run `dmlrepro extract --features {self.path.parent.name}/{self.path.stem}` if the manifest changed)"
        )


@contextmanager
def _open_features(path: Path):
    """np.load of a features file, with messages that say how to rebuild it when it is missing or unreadable."""
    rebuild = f"dmlrepro extract --features {path.parent.name}/{path.stem}"
    if not path.is_file():
        raise DmlReproError(f"features file {path} does not exist; run `{rebuild}` first")
    try:
        with np.load(path, allow_pickle=False) as data:
            yield data
    except DmlReproError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise DmlReproError(f"cannot read features file {path} ({exc}); delete it and run `{rebuild}`") from None


def _splits_of(data) -> list[str]:
    return sorted(k[: -len("_features")] for k in data.files if k.endswith("_features"))


def feature_splits(path: Path) -> list[str]:
    """The splits a features file holds, read from its index (no array is loaded)."""
    with _open_features(Path(path)) as data:
        return _splits_of(data)


def load_features(path: Path, splits: Optional[Iterable[str]] = None) -> FeatureSet:
    """Load a features file: {<split>_features (float16), <split>_labels, <split>_rows, meta (dict)}.

    float32 conversion is left to the caller. `splits` lists the splits to read, which must be present.
    """
    path = Path(path)
    with _open_features(path) as data:
        present = _splits_of(data)
        missing = sorted(set(splits or ()) - set(present))
        wanted = set(splits) if splits else None  # read only the splits asked for (train is the bulk)
        out = FeatureSet({k: data[k] for k in data.files
                          if wanted is None or k == "meta" or k.rsplit("_", 1)[0] in wanted})
    out.path = path
    if missing:
        raise DmlReproError(
            f"{path} has no split {', '.join(missing)}; its splits are {present} "
            f"(re-run `dmlrepro extract --features {path.parent.name}/{path.stem}` if the manifest changed)"
        )
    if "meta" in out:
        out["meta"] = json.loads(str(out["meta"]))
    for split in splits or ():
        for suffix in ("features", "labels", "rows"):
            out[f"{split}_{suffix}"]  # raises a DmlReproError naming the present splits
    _check_finite(out, path)
    return out


def _check_finite(feats: FeatureSet, path: Path) -> None:
    """Refuse features holding NaN or infinite values: a model trained or scored on them is
    meaningless, and the loss's "diverged" would blame the learning rate."""
    from ..readers import first_non_finite

    for key in sorted(k for k in feats if k.endswith("_features")):
        array = feats[key]
        bad = first_non_finite(array)
        if bad is not None:
            where = np.unravel_index(bad, array.shape)
            raise DmlReproError(
                f"features file {path} holds NaN or infinite values ({key}, first at index {tuple(map(int, where))}); "
                f"delete it and rebuild it with `dmlrepro extract --features {path.parent.name}/{path.stem}` (if they "
                f"come back, the backbone's weights file holds them: check params.yaml's weights:)")
