"""Fine-tune a backbone and its embedding head end to end from images (`regime: finetune`).

What the papers' code does, as settings (params.yaml `finetune:`, the papers' values in their
declarations' `real_settings`):

* views: RandomResizedCrop `input_size` with area in `crop_scale` + flip for training; Resize
  `resize` + CenterCrop `input_size` for evaluation (:mod:`.images`), decoded in `workers`
  processes, each view seeded by (seed, epoch, position), so a resumed or multi-process run sees
  the same images;
* learning rates: the head at `train.lr`, the backbone at `train.lr x backbone_lr_multiplier`,
  the loss's parameters (proxies) at `train.lr x loss_lr_multiplier`;
* `warmup_epochs`: the first epochs train the head and the loss's parameters only (the backbone
  runs without gradients), as the Proxy-Anchor and SGAR code do;
* `frozen_bn`: BatchNorm layers keep their ImageNet statistics and affine parameters;
* `grad_clip`: the gradient norm is clipped (SGAR: 10; its code variant clips each value instead,
  `Criterion.clip_gradients`); `amp`: mixed precision (bfloat16-free float16 autocast with a
  gradient scaler) on CUDA, ignored on CPU.

Selection, checkpoints (which also hold the gradient scaler), resume and the MLflow record are the
shared loop's (:mod:`.loop`). Under `torchrun` the global batch is split over the processes
(:mod:`.distributed`); rank 0 alone evaluates and writes.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..backbones import create_backbone, freeze_batchnorm
from ..errors import DmlReproError
from ..evaluation.metrics import evaluate_retrieval
from ..evaluation.sets import evaluation_sets, score_set
from ..methods import build_criterion
from ..study.runs import Run, RunPaths
from ..study.settings import RunSettings
from ..threads import set_threads
from . import distributed
from .heads import EmbeddingHead
from .loop import optimizer_and_schedule, seed_everything, train_loop
from .images import (EvaluationViews, ManifestImages, SeededBatches, TrainingViews, ViewSettings, loader)
from .sampler import batch_sampler


#: the step index of the views class statistics are taken on (``train_embeddings(augmented=True)``):
#: no epoch has this many steps, so they never repeat a batch's views
STATISTICS_STEP = 2 ** 31 - 1


class EmbeddingNetwork(torch.nn.Module):
    """pixels (B, 3, H, W) 0..255 -> backbone features -> linear head -> z (or x = z / ||z||)."""

    def __init__(self, backbone: torch.nn.Module, head: EmbeddingHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, pixels: torch.Tensor, normalize: bool = True, backbone_grad: bool = True) -> torch.Tensor:
        with torch.set_grad_enabled(backbone_grad and torch.is_grad_enabled()):
            features = self.backbone(pixels)
        return self.head(features.float(), normalize=normalize)


def build_network(cfg: dict) -> EmbeddingNetwork:
    """The backbone (ImageNet weights) and a Kaiming-initialised head; the caller seeds torch."""
    bcfg, fcfg = cfg["backbone"], cfg["finetune"]
    backbone = create_backbone(bcfg["name"], bcfg.get("weights"), input_size=fcfg["input_size"],
                               pooling=bcfg.get("pooling"))
    module = backbone.module
    module.requires_grad_(True)
    return EmbeddingNetwork(module, EmbeddingHead(backbone.feature_dim, cfg["train"]["embedding_dim"]))


def set_training(net: EmbeddingNetwork, frozen_bn: bool) -> None:
    net.train()
    if frozen_bn:
        freeze_batchnorm(net.backbone)


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _autocast(device: str, amp: bool):
    on_cuda = torch.device(device).type == "cuda"
    return torch.autocast("cuda", dtype=torch.float16, enabled=amp and on_cuda) if on_cuda else \
        torch.autocast("cpu", enabled=False)


@torch.no_grad()
def embed_rows(net: EmbeddingNetwork, images: ManifestImages, views: ViewSettings, rows, device: str,
               batch: int = 128, workers: int = 0, amp: bool = False, normalize: bool = True,
               seeds=None) -> np.ndarray:
    """float32 embeddings of the evaluation views of manifest `rows` (L2-normalised by default), or
    with `seeds` of one training view of each row, drawn from its seed."""
    net.eval()
    out = []
    cuda = torch.device(device).type == "cuda"
    rows = [int(r) for r in np.asarray(rows).ravel()]
    dataset = EvaluationViews(images, views) if seeds is None else TrainingViews(images, views)
    for pixels in loader(dataset, batch_size=batch, workers=workers, pin=cuda,
                         items=rows if seeds is None else list(zip(rows, seeds))):
        with _autocast(device, amp):
            out.append(net(pixels.to(device, non_blocking=True), normalize=normalize).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, net.head.out_dim), np.float32)


def split_arrays(images: ManifestImages, splits) -> dict:
    """`score_set`'s input for images: ``<split>_features`` holds (1, n) manifest rows to embed."""
    out = {}
    for split in splits:
        rows = images.rows(split)
        out[f"{split}_features"], out[f"{split}_labels"] = rows[None, :], images.labels[rows]
    return out


def check_settings(settings: RunSettings, procs: distributed.Processes) -> None:
    train, finetune = settings.train, settings.finetune
    if procs.distributed and train.batch_size % (procs.world_size * train.m_per_class):
        raise DmlReproError(
            f"train.batch_size {train.batch_size} must be a multiple of {procs.world_size} processes x "
            f"train.m_per_class {train.m_per_class}, so that each process gets whole classes")
    if finetune.resize < finetune.input_size:
        raise DmlReproError(f"finetune.resize ({finetune.resize}) must be at least finetune.input_size "
                            f"({finetune.input_size}): evaluation crops the centre input_size of the resized image")


class FinetuneRegime:
    """Backbone and head trained end to end from decoded images (and, under torchrun, over processes)."""

    def __init__(self, images: Path, run: Run, device: str, test_every_epoch: bool, procs: distributed.Processes):
        cfg, train, finetune = run.config, run.settings.train, run.settings.finetune
        self.run_id, self.config, self.config_hash, self.seed = run.id, cfg, run.hash, run.seed
        self.train, self.procs, self.is_main, self.device = train, procs, procs.is_main, device
        self.finetune = finetune
        cuda = torch.device(device).type == "cuda"
        self.amp = finetune.amp and cuda
        self.images = ManifestImages(images)
        self.views = ViewSettings.of(finetune)
        self.test_sets = evaluation_sets(self.images.splits, str(self.images.manifest)) if test_every_epoch else []
        self.arrays = split_arrays(self.images, ["val", *(s for t in self.test_sets for s in t.splits)])
        self.ks = run.settings.evaluation.ks

        self.train_rows = self.images.rows("train")
        classes, self.train_targets = np.unique(self.images.labels[self.train_rows], return_inverse=True)
        seed_everything(run.seed)
        self.net = build_network(cfg).to(device)
        set_training(self.net, finetune.frozen_bn)  # frozen BN parameters stay out of the optimizer and DDP
        self.criterion = build_criterion({k: v for k, v in cfg["method"].items() if k != "name"},
                                         num_classes=len(classes), embedding_dim=train.embedding_dim,
                                         name=run.method).to(device)
        lr = train.lr
        groups = [{"params": self.net.head.parameters(), "lr": lr, "name": "head"},
                  {"params": [p for p in self.net.backbone.parameters() if p.requires_grad],
                   "lr": lr * finetune.backbone_lr_multiplier, "name": "backbone"},
                  *self.criterion.param_groups(lr)]
        self.optimizer, self.scheduler = optimizer_and_schedule(groups, train)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        sampler = batch_sampler(self.train_targets, train, run.seed)
        self.seeded_batches = SeededBatches(sampler, self.train_rows, run.seed, procs.rank, procs.world_size)
        self.targets = np.zeros(len(self.images.labels), dtype=np.int64)
        self.targets[self.train_rows] = self.train_targets
        self.loader = loader(TrainingViews(self.images, self.views), batch_sampler=self.seeded_batches,
                             workers=finetune.workers, pin=cuda)
        self.model = self.net
        if procs.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device] if cuda else None, broadcast_buffers=False,
                find_unused_parameters=finetune.warmup_epochs > 0)  # warm-up epochs leave the backbone out
        self.loader_wait = 0.0

    def checkpointed(self) -> dict:
        return {"network": self.net, "criterion": self.criterion, "optimizer": self.optimizer,
                "scheduler": self.scheduler, "scaler": self.scaler}

    def embed(self, rows, normalize: bool = True, seeds=None) -> np.ndarray:
        return embed_rows(self.net, self.images, self.views, rows, self.device, self.finetune.eval_batch_size,
                          self.finetune.workers, self.amp, normalize, seeds)

    def start_epoch(self, epoch: int) -> None:
        set_training(self.net, self.finetune.frozen_bn)
        self.seeded_batches.set_epoch(epoch)

    def batches(self, epoch: int):
        warm = epoch <= self.finetune.warmup_epochs
        self.loader_wait, t_step = 0.0, time.time()
        for pixels, items in zip(self.loader, self.seeded_batches):
            self.loader_wait += time.time() - t_step
            y = torch.from_numpy(self.targets[[row for row, _ in items]]).to(self.device)
            with _autocast(self.device, self.amp):
                z = self.model(pixels.to(self.device, non_blocking=True), normalize=False, backbone_grad=not warm)
            yield distributed.gather_batch(z.float(), y, self.procs)
            t_step = time.time()

    def train_embeddings(self, epoch: int, augmented: bool = False):
        """Raw z of every training image: its evaluation view, or (augmented) one training view
        seeded by (seed, epoch)."""
        seeds = ([(self.seed, epoch, STATISTICS_STEP, i) for i in range(len(self.train_rows))] if augmented
                 else None)
        z = torch.from_numpy(self.embed(self.train_rows, normalize=False, seeds=seeds)).to(self.device)
        set_training(self.net, self.finetune.frozen_bn)
        return z, torch.from_numpy(self.train_targets).long().to(self.device)

    def apply_gradients(self, loss: torch.Tensor, parameters: list) -> None:
        # DDP averages: x world size = the global batch's gradient
        self.scaler.scale(loss * self.procs.world_size).backward()
        distributed.unscale_loss_parameters(self.criterion, self.procs)
        self.scaler.unscale_(self.optimizer)  # clipping sees the true gradients (a no-op without AMP)
        self.criterion.clip_gradients(parameters, self.finetune.grad_clip)  # the norm, or the method's rule
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def scores(self) -> dict:
        scored = {"val": evaluate_retrieval(self.embed(self.arrays["val_features"]), self.arrays["val_labels"],
                                            ks=self.ks, compute_nmi=False)}
        for eset in self.test_sets:
            scored[eset.name] = score_set(self.embed, self.arrays, eset, self.ks)
        return scored

    def weights(self) -> dict:
        return _cpu_copy(self.net.state_dict())

    def epoch_entry(self, epoch: int, seconds: float, steps: int) -> dict:
        return {"seconds": round(seconds, 3), "images_per_second": round(steps * self.train.batch_size / max(seconds, 1e-9), 2),
                "loader_wait_seconds": round(self.loader_wait, 3)}

    def epoch_label(self, epoch: int) -> str:
        return " (warm-up)" if epoch <= self.finetune.warmup_epochs else ""

    def model_entries(self) -> dict:
        return {"head_kind": "network", "in_dim": self.net.head.in_dim, "out_dim": self.net.head.out_dim}

    def barrier(self) -> None:
        distributed.barrier(self.procs)


def train_finetune(run: Run, paths: RunPaths, device: str, test_every_epoch: bool = False, tracker=None,
                   procs: distributed.Processes | None = None) -> dict:
    """Fine-tune one run; write model.pt and history.json into its folder (rank 0)."""
    procs = procs or distributed.from_environment()
    check_settings(run.settings, procs)
    device = distributed.start(procs, device)
    set_threads(run.settings.threads)
    regime = FinetuneRegime(paths.images, run, device, test_every_epoch, procs)
    summary = train_loop(regime, paths.out_dir, paths.checkpoint(run.hash, test_every_epoch), tracker)
    distributed.stop(procs)
    return summary


def network_from_model(model: dict, which: str = "best") -> EmbeddingNetwork:
    """The fine-tuned network of a model.pt, with the weights of `which` (best, last, <set>_best)."""
    net = build_network(model["config"])
    net.load_state_dict(model[f"{which}_state"])
    return net
