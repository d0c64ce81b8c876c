"""Images for the fine-tuning regime: seeded training views, evaluation views, worker loading.

Training view (the papers' augmentation): RandomResizedCrop to `input_size` with area fraction in
`crop_scale` ((0.16, 1) in the IAA and Proxy-Anchor/SGAR code) and aspect 3/4..4/3, then a
horizontal flip with probability 1/2 (:func:`..backbones.extract.augmented_view`, torchvision's
algorithm on PIL, no torchvision needed). Evaluation view: the shorter side resized to `resize`
(256), then the centre `input_size` (224) cropped.

With `pre_resize` set (the IAA code on Cars, SOP and In-Shop: 256) the shorter side is first resized
to it, as torchvision's Resize(int) does, so the crop's pixels come from that smaller image.

Every training view is drawn from its own generator, seeded by (run seed, epoch, position in the
epoch): the images of epoch k are the same whatever the number of loader workers, whichever
process (DDP rank) decodes them, and after a resume. The batch sampler yields lists of
``(row, seed)`` pairs, so a worker needs no state of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..backbones.extract import augmented_view, load_rgb, read_manifest_rows, to_batch
from ..study.settings import FinetuneSettings


@dataclass(frozen=True)
class ViewSettings:
    input_size: int = 224
    resize: int = 256
    crop_scale: tuple = (0.16, 1.0)
    flip: bool = True
    pre_resize: int | None = None

    @classmethod
    def of(cls, finetune: FinetuneSettings) -> "ViewSettings":
        return cls(int(finetune.input_size), int(finetune.resize), tuple(finetune.crop_scale), bool(finetune.flip),
                   int(finetune.pre_resize) if finetune.pre_resize else None)


def resize_shorter(img: Image.Image, side: int) -> Image.Image:
    """The shorter side to `side`, the longer in proportion, truncated (torchvision's Resize(int))."""
    w, h = img.size
    size = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
    return img.resize(size, Image.Resampling.BILINEAR)


def evaluation_view(img: Image.Image, resize: int, size: int) -> Image.Image:
    """Resize the shorter side to `resize`, then crop the centre size x size (one resampling step)."""
    w, h = img.size
    side = min(w, h) * size / resize  # the crop, in source pixels
    left, top = (w - side) / 2.0, (h - side) / 2.0
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


class ManifestImages:
    """The images of a prepared dataset (manifest order): labels and splits by row."""

    def __init__(self, dataset_dir: Path):
        rows, self.splits, self.manifest = read_manifest_rows(Path(dataset_dir))
        self.paths = [r["path"] for r in rows]
        self.labels = np.array([r["label"] for r in rows], dtype=np.int64)

    def rows(self, split: str) -> np.ndarray:
        return np.asarray(self.splits.get(split, []), dtype=np.int64)


class TrainingViews(torch.utils.data.Dataset):
    """item (row, seed) -> uint8 (size, size, 3) augmented view of that image."""

    def __init__(self, images: ManifestImages, views: ViewSettings):
        self.images, self.views = images, views

    def __len__(self) -> int:
        return len(self.images.paths)

    def __getitem__(self, item) -> np.ndarray:
        row, seed = item
        rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
        img = load_rgb(self.images.paths[row])
        if self.views.pre_resize:
            img = resize_shorter(img, self.views.pre_resize)
        return np.asarray(augmented_view(img, self.views.input_size, rng, self.views.crop_scale, self.views.flip),
                          dtype=np.uint8)


class EvaluationViews(torch.utils.data.Dataset):
    """item row -> uint8 (size, size, 3) evaluation view (resize + centre crop)."""

    def __init__(self, images: ManifestImages, views: ViewSettings):
        self.images, self.views = images, views

    def __len__(self) -> int:
        return len(self.images.paths)

    def __getitem__(self, row) -> np.ndarray:
        img = load_rgb(self.images.paths[row])
        return np.asarray(evaluation_view(img, self.views.resize, self.views.input_size), dtype=np.uint8)


class SeededBatches(torch.utils.data.Sampler):
    """Wraps a batch sampler of row positions: yields [(row, (seed, epoch, step, i)), ...] per batch,
    optionally only this process's slice of each global batch (DDP)."""

    def __init__(self, batches, rows: np.ndarray, seed: int, rank: int = 0, world_size: int = 1):
        self.batches, self.rows, self.seed = batches, rows, int(seed)
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list]:
        for step, batch in enumerate(self.batches.batches(self.epoch)):
            items = [(int(self.rows[p]), (self.seed, self.epoch, step, i)) for i, p in enumerate(batch)]
            yield local_slice(items, self.rank, self.world_size)


def local_slice(items: Sequence, rank: int, world_size: int) -> list:
    """The contiguous part `rank` of `world_size` takes of a global batch (class groups stay whole
    when the batch size is a multiple of world_size x m_per_class)."""
    per = -(-len(items) // world_size)
    return list(items[rank * per:(rank + 1) * per])


def collate(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    return to_batch(arrays)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is PIL's; a worker's torch threads would only contend


def loader(dataset, batch_sampler=None, batch_size: int | None = None, workers: int = 0, pin: bool = False,
           items: Sequence | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` that decodes in `workers` processes (0: in this process)."""
    kwargs = dict(num_workers=workers, collate_fn=collate, pin_memory=pin,
                  worker_init_fn=_worker_init if workers else None, persistent_workers=False)
    if workers:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    subset = torch.utils.data.Subset(dataset, list(items))
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, **kwargs)
