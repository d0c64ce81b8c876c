"""Train an embedding head on cached backbone features.

Honest protocol: the best epoch is the one with the best validation score (a class-disjoint
split carved from the training classes); the last epoch is kept too. With `test_every_epoch` every
evaluation set (:mod:`dmlrepro.evaluation.sets`: the test split, In-Shop's query -> gallery, each of
VehicleID's test lists) is scored every epoch as well and each set's best-on-test weights are kept
(``<set>_best_state``), so the papers' protocol (best epoch chosen on test, as the authors' code
reports) can be shown beside the honest one; test scores never influence the
validation-selected model. A checkpoint is written
after every epoch, outside the declared outputs, so a killed run resumes where it stopped and
ends with the same metrics: every random draw of epoch k is a function of (seed, k). The batches
and view choices use their own generators keyed on (seed, k), and the global torch, numpy and
python generators, which losses that sample (IAA's Gaussians, SGAR's directions) draw from, are
re-seeded from (seed, k) at the start of every epoch.

A loss that becomes NaN or infinite stops the run at once (epoch, step and the last finite loss in
the message) and no model is written.
"""
from __future__ import annotations

import copy
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import atomic
from ..backbones.extract import feature_splits, load_features
from ..errors import DmlReproError
from ..readers import check_finite_weights, read_torch
from ..evaluation.metrics import evaluate_retrieval
from ..evaluation.sets import evaluation_sets, score_set
from ..methods import build_criterion
from ..study.runs import Run
from .heads import EmbeddingHead, IdentityHead
from .sampler import batch_sampler
from .selection import Selection

CHECKPOINT_VERSION = 3


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int) -> None:
    """Re-seed the global generators from (seed, epoch), so a resumed epoch draws what it drew before."""
    seed_everything(int(np.random.SeedSequence([seed, epoch, 2]).generate_state(1)[0]))


class Diverged(DmlReproError):
    """The loss became NaN or infinite."""


def set_threads(n: int) -> None:
    """Pin torch and faiss to the job's thread count: parallel jobs that each spin up every core's
    worth of OpenMP threads run several times slower than pinned ones."""
    import faiss

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def make_head(kind: str, in_dim: int, out_dim: int) -> torch.nn.Module:
    return IdentityHead() if kind == "identity" else EmbeddingHead(in_dim, out_dim)


@torch.no_grad()
def embed(head: torch.nn.Module, features: np.ndarray, device: str, batch: int = 4096) -> np.ndarray:
    """Embed float16 features (n, D) in batches; returns float32 L2-normalised embeddings."""
    head.eval()
    out = [
        head(torch.from_numpy(features[i : i + batch].astype(np.float32)).to(device)).cpu().numpy()
        for i in range(0, len(features), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


_UNWRITABLE_CHECKPOINTS: set = set()


def _save_checkpoint(path: Path, state: dict) -> bool:
    """Write the resume state; a failed write (full disk, read-only folder) is a warning (once per
    file), not the end of the training: only the ability to resume is lost. Returns whether it was written."""
    try:
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a Python file: a failure is an OSError
            torch.save(state, fh)
    except OSError as exc:
        if path not in _UNWRITABLE_CHECKPOINTS:
            _UNWRITABLE_CHECKPOINTS.add(path)
            print(f"warning: cannot write the checkpoint {path} ({exc.strerror or exc}); training goes on, but a "
                  f"killed job would start this run over: free space in {path.parent} (or make it writable), or "
                  f"point params.yaml's paths.checkpoints elsewhere", file=sys.stderr)
        return False
    return True


def _load_checkpoint(path: Path, cfg_hash: str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = read_torch(path, "checkpoint", "dmlrepro train (it starts the run over)")
    except DmlReproError as exc:  # a torn file cannot happen (atomic writes), but be explicit if it does
        print(f"warning: ignoring it: {exc}", file=sys.stderr)
        return None
    if not isinstance(state, dict) or state.get("config_hash") != cfg_hash or state.get("version") != CHECKPOINT_VERSION:
        return None
    return state


def optimizer_and_schedule(groups: list, tcfg: dict):
    """Adam or AdamW over the parameter groups, and the step schedule (lr x lr_gamma at each milestone)."""
    opt_cls = torch.optim.AdamW if tcfg.get("optimizer", "adam") == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, weight_decay=tcfg.get("weight_decay", 0.0))
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=tcfg.get("lr_milestones", []), gamma=tcfg.get("lr_gamma", 0.1))


def checkpoint_path(params: dict, cfg_hash: str, test_every_epoch: bool) -> Path:
    return Path(params["paths"]["checkpoints"]) / f"{cfg_hash}-{int(test_every_epoch)}.pt"


def resume(path: Path, run: Run, objects: dict, announce: bool = True) -> dict | None:
    """Load the run's checkpoint (None when there is none of this configuration) into `objects`
    ({checkpoint key: module, optimizer, scheduler...}); returns the checkpoint."""
    state = _load_checkpoint(path, run.hash)
    if state is not None:
        for key, obj in objects.items():
            obj.load_state_dict(state[key])
        if announce:
            print(f"resuming {run.id} from epoch {state['epoch'] + 1} ({path})", file=sys.stderr)
    return state


def train_run(params: dict, run: Run, out_dir: Path, device: str, test_every_epoch: bool = False,
              tracker=None) -> dict:
    """Train one run; write model.pt and history.json into out_dir.

    tracker: a reporting.tracking.TrainingTracker (the CLI's), or None for no MLflow record: it is
    started with the checkpoint's MLflow run id, told each epoch, and finished after the files."""
    cfg, cfg_hash, seed = run.config, run.hash, run.seed
    tcfg = cfg["train"]
    mcfg = {k: v for k, v in cfg["method"].items() if k != "name"}
    ks = cfg["evaluation"]["ks"]
    set_threads(tcfg.get("threads", 1))
    feat_path = run.features.path(params)
    test_sets = evaluation_sets(feature_splits(feat_path), str(feat_path)) if test_every_epoch else []
    feats = load_features(feat_path, splits=dict.fromkeys(["train", "val", *(s for t in test_sets for s in t.splits)]))
    train_x, train_y = feats["train_features"], feats["train_labels"]
    val_x, val_y = feats["val_features"][0], feats["val_labels"]

    def scores(head) -> dict:
        scored = {"val": evaluate_retrieval(embed(head, val_x, device), val_y, ks=ks, compute_nmi=False)}
        for eset in test_sets:
            scored[eset.name] = score_set(lambda x: embed(head, x, device), feats, eset, ks)
        return scored

    in_dim = train_x.shape[-1]
    seed_everything(seed)
    if mcfg["loss"] == "none":
        head = make_head("identity", in_dim, in_dim)
        model = {"head_kind": "identity", "in_dim": in_dim, "out_dim": in_dim, "best_state": {}, "last_state": {},
                 "best_epoch": 0, "last_epoch": 0}
        for eset in test_sets:
            model.update({f"{eset.name}_best_state": {}, f"{eset.name}_best_epoch": 0})
        history = {"config_hash": cfg_hash, "epochs": [{"epoch": 0, "loss": None, **scores(head)}], "best_epoch": 0}
        if tracker is not None:
            model["mlflow_run_id"] = history["mlflow_run_id"] = tracker.start(None)
            tracker.log_epoch(history["epochs"][0])
        summary = _finish(out_dir, model, history, cfg, cfg_hash)
        if tracker is not None:
            tracker.finish(out_dir)
        return summary

    out_dim = tcfg["embedding_dim"]
    classes, train_targets = np.unique(train_y, return_inverse=True)  # proxies need labels 0..C-1
    head = make_head("linear", in_dim, out_dim).to(device)
    criterion = build_criterion(mcfg, num_classes=len(classes), embedding_dim=out_dim, name=run.method).to(device)
    groups = [{"params": head.parameters(), "lr": tcfg["lr"]}] + criterion.param_groups(tcfg["lr"])
    optimizer, scheduler = optimizer_and_schedule(groups, tcfg)
    sampler = batch_sampler(train_targets, tcfg, seed)
    ckpt_path = checkpoint_path(params, cfg_hash, test_every_epoch)
    state = resume(ckpt_path, run, {"head": head, "criterion": criterion, "optimizer": optimizer,
                                    "scheduler": scheduler})
    history, start = (state["history"], state["epoch"] + 1) if state else ({"config_hash": cfg_hash, "epochs": []}, 1)
    selection = Selection(tcfg.get("selection_metric", "recall@1"), [e.name for e in test_sets], state)
    mlflow_run_id = tracker.start(state and state.get("mlflow_run_id"), history["epochs"]) if tracker else None

    n_views = train_x.shape[0]
    targets = torch.from_numpy(train_targets).long()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]

    @torch.no_grad()
    def train_embeddings(augmented: bool = False):
        """Raw z of every training image, for wrappers that keep class statistics: its plain view,
        or (augmented) one view drawn as the training steps draw theirs, seeded by (seed, epoch)
        (the IAA code estimates them through a loader with the training transform)."""
        n = train_x.shape[1]
        # `epoch`: the loop's current epoch; start_epoch calls this before the epoch's first step
        views = np.random.default_rng([seed, epoch, 3]).integers(0, n_views, size=n) if augmented else np.zeros(n, int)
        rows = np.arange(n)
        z = [head(torch.from_numpy(train_x[views[i : i + 8192], rows[i : i + 8192]].astype(np.float32)).to(device),
                  normalize=False) for i in range(0, n, 8192)]
        return torch.cat(z), targets.to(device)

    last_finite = history["epochs"][-1]["loss"] if history["epochs"] else None
    for epoch in range(start, tcfg["epochs"] + 1):
        t0 = time.time()
        head.train()
        sampler.set_epoch(epoch)
        seed_epoch(seed, epoch)
        criterion.start_epoch(epoch, tcfg["epochs"], train_embeddings)
        view_rng = np.random.default_rng([seed, epoch, 1])  # which augmented view each sample uses
        losses, norms = [], []
        for step, batch in enumerate(sampler, start=1):
            idx = np.asarray(batch)
            views = view_rng.integers(0, n_views, size=len(idx))
            x = torch.from_numpy(train_x[views, idx].astype(np.float32)).to(device)
            z = head(x, normalize=False)  # raw z: losses normalise inside where their formula says so
            try:
                loss = criterion(z, targets[idx].to(device))
            except FloatingPointError as exc:
                raise _diverged(run, epoch, step, last_finite, str(exc)) from None
            if not torch.isfinite(loss):
                raise _diverged(run, epoch, step, last_finite, f"the loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            criterion.clip_gradients(parameters)  # no clipping unless the method's code clips (SGAR code)
            optimizer.step()
            last_finite = loss.item()
            losses.append(last_finite)
            norms.append(z.detach().norm(dim=1).mean().item())
        scheduler.step()
        scored = scores(head)
        entry = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"],
                 "embedding_norm": round(float(np.mean(norms)), 4), **scored, "seconds": round(time.time() - t0, 3)}
        history["epochs"].append(entry)
        if tracker is not None:
            tracker.log_epoch(entry)
        selection.update(epoch, scored, lambda: copy.deepcopy(head.state_dict()))
        print(f"epoch {epoch}/{tcfg['epochs']} loss {entry['loss']:.4f} val {selection.metric} "
              f"{scored['val'][selection.metric]:.4f}", file=sys.stderr)
        _save_checkpoint(ckpt_path, {
            "version": CHECKPOINT_VERSION, "config_hash": cfg_hash, "epoch": epoch,
            "head": head.state_dict(), "criterion": criterion.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "history": history, **selection.checkpoint(), "mlflow_run_id": mlflow_run_id,
        })
        if os.environ.get("DMLREPRO_STOP_AFTER_EPOCH") == str(epoch):  # lets tests simulate a killed job
            raise SystemExit(f"stopping after epoch {epoch} as DMLREPRO_STOP_AFTER_EPOCH asks")

    model = {"head_kind": "linear", "in_dim": in_dim, "out_dim": out_dim, "last_state": head.state_dict(),
             "last_epoch": tcfg["epochs"], **selection.model_entries(history)}
    if mlflow_run_id is not None:
        model["mlflow_run_id"] = history["mlflow_run_id"] = mlflow_run_id
    summary = _finish(out_dir, model, history, cfg, cfg_hash)
    if tracker is not None:
        tracker.finish(out_dir)
    ckpt_path.unlink(missing_ok=True)  # the run is complete; its resume state is no longer needed
    return summary


def _diverged(run: Run, epoch: int, step: int, last_finite, why: str) -> Diverged:
    last = "no finite loss yet" if last_finite is None else f"last finite loss {last_finite:.6g}"
    why = why.split("; try a lower")[0]  # a loss's own advice (pml's): the advice below says it, once
    return Diverged(
        f"training of {run.id} diverged at epoch {epoch}, step {step}: {why} ({last}); no model was written. "
        "Lower train.lr (or the loss's loss_lr_multiplier), or check the loss_args"
    )


def _finish(out_dir: Path, model: dict, history: dict, cfg: dict, cfg_hash: str) -> dict:
    model.update({"config": cfg, "config_hash": cfg_hash})
    atomic.write_torch(out_dir / "model.pt", model)
    try:
        atomic.write_json(out_dir / "history.json", history)
    except DmlReproError:
        (out_dir / "model.pt").unlink(missing_ok=True)  # never one declared output without the other
        raise
    return {"config_hash": cfg_hash, "best_epoch": model["best_epoch"], "out_dir": str(out_dir)}


def load_model(path: Path, run_id: str | None = None) -> dict:
    """A trained model.pt, checked: readable, a model of this package, finite weights."""
    rebuild = f"dmlrepro train --run {run_id}" if run_id else "dmlrepro train --run RUN"
    if not path.exists():
        raise DmlReproError(f"trained model {path} not found; run `{rebuild}` first")
    model = read_torch(path, "trained model", rebuild)
    if not isinstance(model, dict) or not {"head_kind", "config_hash", "best_epoch"} <= set(model):
        raise DmlReproError(f"{path} is not a model written by `dmlrepro train` (it lacks head_kind, config_hash "
                            f"or best_epoch); delete it and rebuild it with `{rebuild}`")
    check_finite_weights(model, path, rebuild)
    return model


def head_from_model(model: dict, which: str = "best") -> torch.nn.Module:
    head = make_head(model["head_kind"], model["in_dim"], model["out_dim"])
    state = model[f"{which}_state"]
    if state:
        head.load_state_dict(state)
    return head
