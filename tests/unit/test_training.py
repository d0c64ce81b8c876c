"""The frozen-regime trainer in process, on synthetic features: exact resume for a loss that draws
random numbers, and the stop on a non-finite loss."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dmlrepro.config import load_params
from dmlrepro.study.runs import resolve_run
from dmlrepro.training import frozen
from conftest import REPO


def _features(path, n_classes=16, per_class=6, dim=16, seed=0):
    """Gaussian clusters; classes 0-7 train, 8-11 val, 12-15 test (class-disjoint)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    labels = np.repeat(np.arange(n_classes), per_class)
    x = (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float16)
    arrays = {}
    for split, keep in (("train", labels < 8), ("val", (labels >= 8) & (labels < 12)), ("test", labels >= 12)):
        arrays[f"{split}_features"] = x[keep][None]
        arrays[f"{split}_labels"] = labels[keep]
        arrays[f"{split}_rows"] = np.flatnonzero(keep)
    arrays["meta"] = np.array(json.dumps({}))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


@pytest.fixture
def setup(tmp_path, torch_one_thread):
    params = load_params(REPO / "params.yaml")
    params["paths"].update({k: str(tmp_path / k) for k in ("features", "runs", "checkpoints")})
    params["train"].update({"epochs": 3, "iterations_per_epoch": 4, "batch_size": 8, "m_per_class": 2,
                            "embedding_dim": 8, "lr_milestones": [2], "lr": 1e-2})
    run = resolve_run(params, "glyphs", "contrastive", 0, [])
    _features(run.features.path(params))
    return params, run, tmp_path


class NoisyCriterion(torch.nn.Module):
    """A loss that draws random numbers every step from the global torch generator."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, z, labels):
        return self.base(z + 0.5 * torch.randn_like(z), labels) + 0.01 * torch.rand(()).to(z)

    def param_groups(self, lr):
        return self.base.param_groups(lr)


def _epochs(history):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history["epochs"]]


def test_a_killed_run_of_a_random_loss_resumes_to_identical_metrics(setup, monkeypatch):
    params, run, tmp = setup
    real = frozen.build_criterion
    monkeypatch.setattr(frozen, "build_criterion", lambda *a, **k: NoisyCriterion(real(*a, **k)))
    frozen.train_run(params, run, tmp / "uninterrupted", "cpu")
    reference = json.loads((tmp / "uninterrupted/history.json").read_text())

    monkeypatch.setenv("DMLREPRO_STOP_AFTER_EPOCH", "1")
    with pytest.raises(SystemExit):
        frozen.train_run(params, run, tmp / "resumed", "cpu")
    assert not (tmp / "resumed/model.pt").exists()
    torch.rand(1000)  # the resumed process's global generators are wherever they happen to be
    np.random.rand(1000)
    monkeypatch.delenv("DMLREPRO_STOP_AFTER_EPOCH")
    frozen.train_run(params, run, tmp / "resumed", "cpu")
    resumed = json.loads((tmp / "resumed/history.json").read_text())
    assert _epochs(resumed) == _epochs(reference)
    assert len(reference["epochs"]) == 3 and all(e["embedding_norm"] > 0 for e in reference["epochs"])


def test_a_non_finite_loss_stops_the_run_with_epoch_step_and_last_loss(setup, monkeypatch):
    params, run, tmp = setup
    real = frozen.build_criterion
    calls = {"n": 0}

    class Exploding(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, z, labels):
            calls["n"] += 1
            loss = self.base(z, labels)
            return loss * float("nan") if calls["n"] == 4 + 3 else loss  # epoch 2, step 3

        def param_groups(self, lr):
            return self.base.param_groups(lr)

    monkeypatch.setattr(frozen, "build_criterion", lambda *a, **k: Exploding(real(*a, **k)))
    with pytest.raises(frozen.Diverged) as info:
        frozen.train_run(params, run, tmp / "out", "cpu")
    msg = str(info.value)
    assert "diverged at epoch 2, step 3" in msg and "the loss is nan" in msg
    assert "last finite loss" in msg and "no model was written" in msg
    assert not (tmp / "out/model.pt").exists()


def test_evaluation_reuses_the_searches_training_made(setup, monkeypatch):
    """metrics.json's val (and, with test scores per epoch, its last and best-on-test epochs) come
    from history.json: only the honest protocol's test split is searched again."""
    from dmlrepro.evaluation import run as evaluation
    from dmlrepro.evaluation.metrics import evaluate_retrieval

    params, run, tmp = setup
    frozen.train_run(params, run, tmp / "out", "cpu", test_every_epoch=True)
    searched = []
    real = evaluation._split_metrics
    monkeypatch.setattr(evaluation, "_split_metrics", lambda head, feats, split, *a: searched.append(split) or
                        real(head, feats, split, *a))
    metrics = evaluation.evaluate_run(params, run, tmp / "out", "cpu", nmi=False, paper_protocol=True,
                                      last_epoch=True)
    assert searched == ["test"]
    history = {e["epoch"]: e for e in json.loads((tmp / "out/history.json").read_text())["epochs"]}
    assert metrics["val"] == history[metrics["best_epoch"]]["val"]
    assert metrics["test_last_epoch"] == history[3]["test"]
    assert metrics["test_paper"] == history[metrics["test_best_epoch"]]["test"]
    # the honest test metrics: an independent search with the selected weights
    model = frozen.load_model(tmp / "out/model.pt")
    feats = np.load(run.features.path(params))
    emb = frozen.embed(frozen.head_from_model(model, "best"), feats["test_features"][0], "cpu")
    expected = evaluate_retrieval(emb, feats["test_labels"], ks=params["evaluation"]["ks"][:1] + [2, 4, 8],
                                  compute_nmi=False)
    assert metrics["test"] == pytest.approx(expected)


def test_the_last_epoch_is_searched_only_when_asked_for(setup, monkeypatch):
    from dmlrepro.evaluation import run as evaluation

    params, run, tmp = setup
    frozen.train_run(params, run, tmp / "out", "cpu")
    searched = []
    real = evaluation._split_metrics
    monkeypatch.setattr(evaluation, "_split_metrics", lambda head, feats, split, *a: searched.append(split) or
                        real(head, feats, split, *a))
    assert "test_last_epoch" not in evaluation.evaluate_run(params, run, tmp / "out", "cpu")
    assert searched == ["test"]
    model = frozen.load_model(tmp / "out/model.pt")
    metrics = evaluation.evaluate_run(params, run, tmp / "out", "cpu", last_epoch=True)
    assert set(metrics["test_last_epoch"]) == set(metrics["test"])
    assert searched == ["test", "test"] + (["test"] if model["last_epoch"] != model["best_epoch"] else [])
