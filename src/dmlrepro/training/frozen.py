"""The frozen regime: train an embedding head on cached backbone features.

Each step embeds one augmented view per sampled image (its view drawn from a generator keyed on
(seed, epoch)) with the linear head; the shared loop (:mod:`.loop`) does the rest. A loss without
training ("none": the backbone's own features) is scored once, with no loop.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from ..backbones.extract import feature_splits, load_features
from ..errors import DmlReproError
from ..evaluation.metrics import evaluate_retrieval
from ..evaluation.sets import evaluation_sets, score_set
from ..methods import build_criterion
from ..readers import check_finite_weights, read_torch
from ..study.runs import Run, RunPaths
from ..threads import set_threads
from .heads import EmbeddingHead, IdentityHead
from .loop import optimizer_and_schedule, seed_everything, train_loop, write_outputs
from .sampler import batch_sampler


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


class CachedFeatures:
    """A run's cached features: the training views, validation and (with test scores per epoch) the
    evaluation sets, and their scoring by a head."""

    def __init__(self, feat_path: Path, run: Run, test_every_epoch: bool, device: str):
        self.test_sets = evaluation_sets(feature_splits(feat_path), str(feat_path)) if test_every_epoch else []
        self.feats = load_features(feat_path, splits=dict.fromkeys(
            ["train", "val", *(s for t in self.test_sets for s in t.splits)]))
        self.train_x, self.train_y = self.feats["train_features"], self.feats["train_labels"]
        self.val_x, self.val_y = self.feats["val_features"][0], self.feats["val_labels"]
        self.ks, self.device = run.settings.evaluation.ks, device

    def scores(self, head: torch.nn.Module) -> dict:
        scored = {"val": evaluate_retrieval(embed(head, self.val_x, self.device), self.val_y, ks=self.ks,
                                            compute_nmi=False)}
        for eset in self.test_sets:
            scored[eset.name] = score_set(lambda x: embed(head, x, self.device), self.feats, eset, self.ks)
        return scored


class FrozenRegime:
    """A linear head (and the loss's own parameters) trained on cached features."""
    is_main = True

    def __init__(self, run: Run, data: CachedFeatures, device: str):
        cfg, train = run.config, run.settings.train
        self.run_id, self.config, self.config_hash, self.seed = run.id, cfg, run.hash, run.seed
        self.train, self.test_sets, self.device, self.data = train, data.test_sets, device, data
        self.in_dim, self.out_dim = data.train_x.shape[-1], train.embedding_dim
        classes, train_targets = np.unique(data.train_y, return_inverse=True)  # proxies need labels 0..C-1
        self.head = make_head("linear", self.in_dim, self.out_dim).to(device)
        mcfg = {k: v for k, v in cfg["method"].items() if k != "name"}
        self.criterion = build_criterion(mcfg, num_classes=len(classes), embedding_dim=self.out_dim,
                                         name=run.method).to(device)
        groups = [{"params": self.head.parameters(), "lr": train.lr}] + self.criterion.param_groups(train.lr)
        self.optimizer, self.scheduler = optimizer_and_schedule(groups, train)
        self.sampler = batch_sampler(train_targets, train, run.seed)
        self.n_views = data.train_x.shape[0]
        self.targets = torch.from_numpy(train_targets).long()

    def checkpointed(self) -> dict:
        return {"head": self.head, "criterion": self.criterion, "optimizer": self.optimizer,
                "scheduler": self.scheduler}

    def start_epoch(self, epoch: int) -> None:
        self.head.train()
        self.sampler.set_epoch(epoch)

    def batches(self, epoch: int):
        view_rng = np.random.default_rng([self.seed, epoch, 1])  # which augmented view each sample uses
        for batch in self.sampler:
            idx = np.asarray(batch)
            views = view_rng.integers(0, self.n_views, size=len(idx))
            x = torch.from_numpy(self.data.train_x[views, idx].astype(np.float32)).to(self.device)
            # raw z: losses normalise inside where their formula says so
            yield self.head(x, normalize=False), self.targets[idx].to(self.device)

    @torch.no_grad()
    def train_embeddings(self, epoch: int, augmented: bool = False):
        """Raw z of every training image: its plain view, or (augmented) one view drawn as the
        training steps draw theirs, seeded by (seed, epoch) (the IAA code estimates class statistics
        through a loader with the training transform)."""
        train_x = self.data.train_x
        n = train_x.shape[1]
        views = (np.random.default_rng([self.seed, epoch, 3]).integers(0, self.n_views, size=n) if augmented
                 else np.zeros(n, int))
        rows = np.arange(n)
        z = [self.head(torch.from_numpy(train_x[views[i : i + 8192], rows[i : i + 8192]].astype(np.float32))
                       .to(self.device), normalize=False) for i in range(0, n, 8192)]
        return torch.cat(z), self.targets.to(self.device)

    def apply_gradients(self, loss: torch.Tensor, parameters: list) -> None:
        loss.backward()
        self.criterion.clip_gradients(parameters)  # no clipping unless the method's code clips (SGAR code)
        self.optimizer.step()

    def scores(self) -> dict:
        return self.data.scores(self.head)

    def weights(self) -> dict:
        return copy.deepcopy(self.head.state_dict())

    def epoch_entry(self, epoch: int, seconds: float, steps: int) -> dict:
        return {"seconds": round(seconds, 3)}

    def epoch_label(self, epoch: int) -> str:
        return ""

    def model_entries(self) -> dict:
        return {"head_kind": "linear", "in_dim": self.in_dim, "out_dim": self.out_dim}

    def barrier(self) -> None:
        pass


def train_frozen(run: Run, paths: RunPaths, device: str, test_every_epoch: bool = False, tracker=None) -> dict:
    """Train one run on its cached features; write model.pt and history.json into its folder.

    tracker: reporting's TrainingTracker (the train stage's), or None for no MLflow record."""
    set_threads(run.settings.threads)
    data = CachedFeatures(paths.features, run, test_every_epoch, device)
    seed_everything(run.seed)
    if run.settings.train is None:  # a loss that trains nothing ("none")
        return _score_untrained(run, data, paths.out_dir, tracker)
    regime = FrozenRegime(run, data, device)
    return train_loop(regime, paths.out_dir, paths.checkpoint(run.hash, test_every_epoch), tracker)


def _score_untrained(run: Run, data: CachedFeatures, out_dir: Path, tracker) -> dict:
    """Loss "none": the backbone's own (L2-normalised) features, scored once as epoch 0."""
    in_dim = data.train_x.shape[-1]
    head = make_head("identity", in_dim, in_dim)
    model = {"head_kind": "identity", "in_dim": in_dim, "out_dim": in_dim, "best_state": {}, "last_state": {},
             "best_epoch": 0, "last_epoch": 0}
    for eset in data.test_sets:
        model.update({f"{eset.name}_best_state": {}, f"{eset.name}_best_epoch": 0})
    history = {"config_hash": run.hash, "epochs": [{"epoch": 0, "loss": None, **data.scores(head)}], "best_epoch": 0}
    if tracker is not None:
        model["mlflow_run_id"] = history["mlflow_run_id"] = tracker.start(None)
        tracker.log_epoch(history["epochs"][0])
    summary = write_outputs(out_dir, model, history, run.config, run.hash)
    if tracker is not None:
        tracker.finish(out_dir)
    return summary


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
