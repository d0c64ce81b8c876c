"""The training loop both regimes share: resume, the epochs, selection, the checkpoint, the
divergence stop, the live MLflow record and the run's files.

A regime (:mod:`.frozen`: a head on cached features; :mod:`.finetune`: backbone and head from
images) builds its network, criterion, optimizer and batches, and supplies how a batch becomes
embeddings and how a step's gradients are applied. The honest protocol keeps the epoch with the
best validation score; with test scores per epoch each evaluation set also keeps its best-on-test
weights (the papers' protocol), which never influence the validation choice (:mod:`.selection`).
Every random draw of epoch k is a function of (seed, k): the global generators are re-seeded at
the start of every epoch, so a resumed run ends with the same metrics.
"""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from .. import atomic
from ..errors import DmlReproError
from ..study.settings import TrainSettings
from .checkpoint import resume, save_checkpoint
from .selection import Selection


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int) -> None:
    """Re-seed the global generators from (seed, epoch), so a resumed epoch draws what it drew before."""
    seed_everything(int(np.random.SeedSequence([seed, epoch, 2]).generate_state(1)[0]))


class Diverged(DmlReproError):
    """The loss became NaN or infinite."""


def diverged(run_id: str, epoch: int, step: int, last_finite, why: str) -> Diverged:
    last = "no finite loss yet" if last_finite is None else f"last finite loss {last_finite:.6g}"
    why = why.split("; try a lower")[0]  # a loss's own advice (pml's): the advice below says it, once
    return Diverged(
        f"training of {run_id} diverged at epoch {epoch}, step {step}: {why} ({last}); no model was written. "
        "Lower train.lr (or the loss's loss_lr_multiplier), or check the loss_args"
    )


def optimizer_and_schedule(groups: list, train: TrainSettings):
    """Adam or AdamW over the parameter groups, and the step schedule (lr x lr_gamma at each milestone)."""
    opt_cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, weight_decay=train.weight_decay)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(train.lr_milestones),
                                                           gamma=train.lr_gamma)


class Regime(Protocol):
    """What a training regime supplies to the loop."""
    run_id: str
    config: dict  # the resolved configuration model.pt records
    config_hash: str
    train: TrainSettings
    seed: int
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    test_sets: list
    is_main: bool

    def checkpointed(self) -> dict:
        """{checkpoint key: object with state_dict/load_state_dict}: what a checkpoint holds."""

    def start_epoch(self, epoch: int) -> None:
        """Training mode and the epoch's batch order (before the generators are re-seeded)."""

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each step's raw embeddings z and labels: the whole (global) batch the loss sees."""

    def train_embeddings(self, epoch: int, augmented: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw z and labels of every training image, for wrappers that keep class statistics."""

    def apply_gradients(self, loss: torch.Tensor, parameters: list) -> None:
        """backward, clipping (the criterion's rule) and the optimizer step."""

    def scores(self) -> dict:
        """{"val": metrics, <evaluation set>: metrics}: the epoch's validation (and test) scores."""

    def weights(self) -> dict:
        """A copy of the weights a model file keeps (the head's, or the whole network's)."""

    def epoch_entry(self, epoch: int, seconds: float, steps: int) -> dict:
        """The regime's own entries of an epoch's history line (speed, loader wait)."""

    def epoch_label(self, epoch: int) -> str:
        """A note on the epoch's progress line (' (warm-up)')."""

    def model_entries(self) -> dict:
        """model.pt's description of the network: head_kind, in_dim, out_dim."""

    def barrier(self) -> None:
        """Wait for every process (distributed training); a no-op otherwise."""


def train_loop(regime: Regime, out_dir: Path, checkpoint: Path, tracker=None) -> dict:
    """Train to the end of the schedule (resuming from `checkpoint` when it holds this configuration);
    write model.pt and history.json into out_dir (the main process). tracker: the MLflow record of
    the training run (reporting's TrainingTracker) or None."""
    state = resume(checkpoint, regime.run_id, regime.config_hash, regime.checkpointed(), announce=regime.is_main)
    history, start = (state["history"], state["epoch"] + 1) if state else \
        ({"config_hash": regime.config_hash, "epochs": []}, 1)
    selection = Selection(regime.train.selection_metric, [e.name for e in regime.test_sets], state)
    tracker = tracker if regime.is_main else None
    mlflow_run_id = tracker.start(state and state.get("mlflow_run_id"), history["epochs"]) if tracker else None
    parameters = [p for group in regime.optimizer.param_groups for p in group["params"]]
    criterion = regime.criterion

    last_finite = history["epochs"][-1]["loss"] if history["epochs"] else None
    for epoch in range(start, regime.train.epochs + 1):
        t0 = time.time()
        regime.start_epoch(epoch)
        seed_epoch(regime.seed, epoch)
        criterion.start_epoch(epoch, regime.train.epochs, lambda augmented=False: regime.train_embeddings(epoch, augmented))
        losses, norms = [], []
        for step, (z, y) in enumerate(regime.batches(epoch), start=1):
            try:
                loss = criterion(z, y)
            except FloatingPointError as exc:
                raise diverged(regime.run_id, epoch, step, last_finite, str(exc)) from None
            if not torch.isfinite(loss):
                raise diverged(regime.run_id, epoch, step, last_finite, f"the loss is {loss.item()}")
            regime.optimizer.zero_grad(set_to_none=True)
            regime.apply_gradients(loss, parameters)
            last_finite = loss.item()
            losses.append(last_finite)
            norms.append(z.detach().float().norm(dim=1).mean().item())
        regime.scheduler.step()
        if regime.is_main:
            scored = regime.scores()
            entry = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": regime.optimizer.param_groups[0]["lr"],
                     "embedding_norm": round(float(np.mean(norms)), 4), **scored,
                     **regime.epoch_entry(epoch, time.time() - t0, len(losses))}
            history["epochs"].append(entry)
            if tracker is not None:
                tracker.log_epoch(entry)
            selection.update(epoch, scored, regime.weights)
            print(f"epoch {epoch}/{regime.train.epochs}{regime.epoch_label(epoch)} loss {entry['loss']:.4f} "
                  f"val {selection.metric} {scored['val'][selection.metric]:.4f}", file=sys.stderr)
            save_checkpoint(checkpoint, {
                "config_hash": regime.config_hash, "epoch": epoch,
                **{key: obj.state_dict() for key, obj in regime.checkpointed().items()},
                "history": history, **selection.checkpoint(), "mlflow_run_id": mlflow_run_id,
            })
        regime.barrier()
        if os.environ.get("DMLREPRO_STOP_AFTER_EPOCH") == str(epoch):  # lets tests simulate a killed job
            raise SystemExit(f"stopping after epoch {epoch} as DMLREPRO_STOP_AFTER_EPOCH asks")

    summary = {"config_hash": regime.config_hash, "best_epoch": selection.best["epoch"], "out_dir": str(out_dir)}
    if regime.is_main:
        model = {**regime.model_entries(), "last_state": regime.weights(), "last_epoch": regime.train.epochs,
                 **selection.model_entries(history)}
        if mlflow_run_id is not None:
            model["mlflow_run_id"] = history["mlflow_run_id"] = mlflow_run_id
        summary = write_outputs(out_dir, model, history, regime.config, regime.config_hash)
        if tracker is not None:
            tracker.finish(out_dir)
        checkpoint.unlink(missing_ok=True)  # the run is complete; its resume state is no longer needed
    regime.barrier()
    return summary


def write_outputs(out_dir: Path, model: dict, history: dict, cfg: dict, cfg_hash: str) -> dict:
    """model.pt and history.json, both or neither; returns the training summary."""
    model.update({"config": cfg, "config_hash": cfg_hash})
    atomic.write_torch(out_dir / "model.pt", model)
    try:
        atomic.write_json(out_dir / "history.json", history)
    except DmlReproError:
        (out_dir / "model.pt").unlink(missing_ok=True)  # never one declared output without the other
        raise
    return {"config_hash": cfg_hash, "best_epoch": model["best_epoch"], "out_dir": str(out_dir)}

