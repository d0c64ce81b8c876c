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

Selection, checkpoints, resume, the live MLflow record and model.pt work as in the frozen regime
(:mod:`.frozen`): the honest protocol keeps the epoch with the best validation score, the papers'
protocol each evaluation set's best epoch; a checkpoint after every epoch holds the network, the
optimizer, the scheduler, the gradient scaler and the selection, and the global generators are
re-seeded from (seed, epoch), so a killed run resumes to the same result. Under `torchrun` the
global batch is split over the processes (:mod:`.distributed`); rank 0 alone evaluates and writes.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..backbones import create_backbone, freeze_batchnorm
from ..config import dataset_dir
from ..errors import DmlReproError
from ..evaluation.metrics import evaluate_retrieval
from ..evaluation.sets import evaluation_sets, score_set
from ..methods import build_criterion
from ..study.runs import Run
from . import distributed
from .frozen import (CHECKPOINT_VERSION, _diverged, _finish, _save_checkpoint, checkpoint_path, optimizer_and_schedule,
                     resume, seed_epoch, seed_everything, set_threads)
from .heads import EmbeddingHead
from .images import (EvaluationViews, ManifestImages, SeededBatches, TrainingViews, ViewSettings, loader)
from .sampler import batch_sampler
from .selection import Selection


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


def check_settings(cfg: dict, procs: distributed.Processes) -> None:
    tcfg, fcfg = cfg["train"], cfg["finetune"]
    if procs.distributed and tcfg["batch_size"] % (procs.world_size * tcfg["m_per_class"]):
        raise DmlReproError(
            f"train.batch_size {tcfg['batch_size']} must be a multiple of {procs.world_size} processes x "
            f"train.m_per_class {tcfg['m_per_class']}, so that each process gets whole classes")
    if fcfg["resize"] < fcfg["input_size"]:
        raise DmlReproError(f"finetune.resize ({fcfg['resize']}) must be at least finetune.input_size "
                            f"({fcfg['input_size']}): evaluation crops the centre input_size of the resized image")


def train_finetune_run(params: dict, run: Run, out_dir: Path, device: str, test_every_epoch: bool = False,
                       tracker=None, procs: distributed.Processes | None = None) -> dict:
    """Fine-tune one run; write model.pt and history.json into out_dir (rank 0)."""
    procs = procs or distributed.from_environment()
    cfg, cfg_hash, seed = run.config, run.hash, run.seed
    tcfg, fcfg = cfg["train"], cfg["finetune"]
    check_settings(cfg, procs)
    device = distributed.start(procs, device)
    set_threads(tcfg.get("threads", 1))
    cuda = torch.device(device).type == "cuda"
    amp = bool(fcfg.get("amp", True)) and cuda
    workers = int(fcfg.get("workers", 0))
    images = ManifestImages(dataset_dir(params, run.dataset))
    views = ViewSettings.of(fcfg)
    test_sets = evaluation_sets(images.splits, str(images.manifest)) if test_every_epoch else []
    arrays = split_arrays(images, ["val", *(s for t in test_sets for s in t.splits)])
    ks = cfg["evaluation"]["ks"]
    eval_batch = int(fcfg.get("eval_batch_size", 128))

    def embed(rows, normalize=True, seeds=None):
        return embed_rows(net, images, views, rows, device, eval_batch, workers, amp, normalize, seeds)

    def scores() -> dict:
        scored = {"val": evaluate_retrieval(embed(arrays["val_features"]), arrays["val_labels"], ks=ks,
                                            compute_nmi=False)}
        for eset in test_sets:
            scored[eset.name] = score_set(embed, arrays, eset, ks)
        return scored

    train_rows = images.rows("train")
    classes, train_targets = np.unique(images.labels[train_rows], return_inverse=True)
    seed_everything(seed)
    net = build_network(cfg).to(device)
    set_training(net, fcfg.get("frozen_bn", True))  # frozen BN parameters stay out of the optimizer and DDP
    criterion = build_criterion({k: v for k, v in cfg["method"].items() if k != "name"}, num_classes=len(classes),
                                embedding_dim=tcfg["embedding_dim"], name=run.method).to(device)
    lr = tcfg["lr"]
    groups = [{"params": net.head.parameters(), "lr": lr, "name": "head"},
              {"params": [p for p in net.backbone.parameters() if p.requires_grad],
               "lr": lr * fcfg.get("backbone_lr_multiplier", 1.0), "name": "backbone"},
              *criterion.param_groups(lr)]
    optimizer, scheduler = optimizer_and_schedule(groups, tcfg)
    parameters = [p for g in optimizer.param_groups for p in g["params"]]
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    sampler = batch_sampler(train_targets, tcfg, seed)
    batches = SeededBatches(sampler, train_rows, seed, procs.rank, procs.world_size)
    targets = np.zeros(len(images.labels), dtype=np.int64)
    targets[train_rows] = train_targets
    train_views = TrainingViews(images, views)
    train_loader = loader(train_views, batch_sampler=batches, workers=workers, pin=cuda)

    ckpt_path = checkpoint_path(params, cfg_hash, test_every_epoch)
    state = resume(ckpt_path, run, {"network": net, "criterion": criterion, "optimizer": optimizer,
                                    "scheduler": scheduler, "scaler": scaler}, announce=procs.is_main)
    history, start = (state["history"], state["epoch"] + 1) if state else ({"config_hash": cfg_hash, "epochs": []}, 1)
    selection = Selection(tcfg.get("selection_metric", "recall@1"), [e.name for e in test_sets], state)
    tracker = tracker if procs.is_main else None
    mlflow_run_id = tracker.start(state and state.get("mlflow_run_id"), history["epochs"]) if tracker else None
    model = net
    if procs.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device] if cuda else None, broadcast_buffers=False,
            find_unused_parameters=fcfg.get("warmup_epochs", 0) > 0)  # warm-up epochs leave the backbone out

    def train_embeddings(augmented: bool = False):
        """Raw z of every training image, for wrappers that keep class statistics: its evaluation
        view, or (augmented) one training view seeded by (seed, epoch) (`epoch`: the loop's)."""
        seeds = [(seed, epoch, STATISTICS_STEP, i) for i in range(len(train_rows))] if augmented else None
        z = torch.from_numpy(embed(train_rows, normalize=False, seeds=seeds)).to(device)
        set_training(net, fcfg.get("frozen_bn", True))
        return z, torch.from_numpy(train_targets).long().to(device)

    last_finite = history["epochs"][-1]["loss"] if history["epochs"] else None
    for epoch in range(start, tcfg["epochs"] + 1):
        t0 = time.time()
        set_training(net, fcfg.get("frozen_bn", True))
        batches.set_epoch(epoch)
        seed_epoch(seed, epoch)
        criterion.start_epoch(epoch, tcfg["epochs"], train_embeddings)
        warm = epoch <= fcfg.get("warmup_epochs", 0)
        losses, norms, decode_s, t_step = [], [], 0.0, time.time()
        for step, (pixels, items) in enumerate(zip(train_loader, batches), start=1):
            decode_s += time.time() - t_step
            y = torch.from_numpy(targets[[row for row, _ in items]]).to(device)
            with _autocast(device, amp):
                z = model(pixels.to(device, non_blocking=True), normalize=False, backbone_grad=not warm)
            all_z, all_y = distributed.gather_batch(z.float(), y, procs)
            try:
                loss = criterion(all_z, all_y)
            except FloatingPointError as exc:
                raise _diverged(run, epoch, step, last_finite, str(exc)) from None
            if not torch.isfinite(loss):
                raise _diverged(run, epoch, step, last_finite, f"the loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * procs.world_size).backward()  # DDP averages: x world size = the global batch's gradient
            distributed.unscale_loss_parameters(criterion, procs)
            scaler.unscale_(optimizer)  # clipping sees the true gradients (a no-op without AMP)
            criterion.clip_gradients(parameters, fcfg.get("grad_clip"))  # the norm, or the method's rule
            scaler.step(optimizer)
            scaler.update()
            last_finite = loss.item()
            losses.append(last_finite)
            norms.append(z.detach().float().norm(dim=1).mean().item())
            t_step = time.time()
        scheduler.step()
        if procs.is_main:
            scored = scores()
            entry = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"],
                     "embedding_norm": round(float(np.mean(norms)), 4), **scored,
                     "seconds": round(time.time() - t0, 3), "images_per_second":
                         round(len(losses) * tcfg["batch_size"] / max(time.time() - t0, 1e-9), 2),
                     "loader_wait_seconds": round(decode_s, 3)}
            history["epochs"].append(entry)
            if tracker is not None:
                tracker.log_epoch(entry)
            selection.update(epoch, scored, lambda: _cpu_copy(net.state_dict()))
            print(f"epoch {epoch}/{tcfg['epochs']}{' (warm-up)' if warm else ''} loss {entry['loss']:.4f} "
                  f"val {selection.metric} {scored['val'][selection.metric]:.4f}", file=sys.stderr)
            _save_checkpoint(ckpt_path, {
                "version": CHECKPOINT_VERSION, "config_hash": cfg_hash, "epoch": epoch,
                "network": net.state_dict(), "criterion": criterion.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "history": history, **selection.checkpoint(),
                "mlflow_run_id": mlflow_run_id,
            })
        distributed.barrier(procs)
        if os.environ.get("DMLREPRO_STOP_AFTER_EPOCH") == str(epoch):  # lets tests simulate a killed job
            raise SystemExit(f"stopping after epoch {epoch} as DMLREPRO_STOP_AFTER_EPOCH asks")

    summary = {"config_hash": cfg_hash, "best_epoch": selection.best["epoch"], "out_dir": str(out_dir)}
    if procs.is_main:
        model_file = {"head_kind": "network", "in_dim": net.head.in_dim, "out_dim": net.head.out_dim,
                      "last_state": _cpu_copy(net.state_dict()), "last_epoch": tcfg["epochs"],
                      **selection.model_entries(history)}
        if mlflow_run_id is not None:
            model_file["mlflow_run_id"] = history["mlflow_run_id"] = mlflow_run_id
        summary = _finish(out_dir, model_file, history, cfg, cfg_hash)
        if tracker is not None:
            tracker.finish(out_dir)
        ckpt_path.unlink(missing_ok=True)
    distributed.barrier(procs)
    distributed.stop(procs)
    return summary


def network_from_model(model: dict, which: str = "best") -> EmbeddingNetwork:
    """The fine-tuned network of a model.pt, with the weights of `which` (best, last, <set>_best)."""
    net = build_network(model["config"])
    net.load_state_dict(model[f"{which}_state"])
    return net
