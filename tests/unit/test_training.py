"""The frozen-regime trainer in process, on synthetic features: exact resume for a loss that draws
random numbers, and the stop on a non-finite loss."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dmlrepro.study.params import load_params
from dmlrepro.methods import CriterionWrapper
from dmlrepro.study.runs import resolve_run
from dmlrepro.training import frozen
from dmlrepro.training.loop import Diverged
from dmlrepro.study.runs import RunPaths
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


class NoisyCriterion(CriterionWrapper):
    """A loss that draws random numbers every step from the global torch generator."""

    def forward(self, z, labels):
        return self.base(z + 0.5 * torch.randn_like(z), labels) + 0.01 * torch.rand(()).to(z)

    def param_groups(self, lr):
        return self.base.param_groups(lr)


def _epochs(history):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history["epochs"]]


def train_killed_and_resumed(params, run, tmp, monkeypatch, stop_after: int = 1):
    """Train `run` once uninterrupted and once killed after epoch `stop_after` then resumed (the
    generators scrambled in between); returns (reference, resumed) as (history, model) pairs."""
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / "uninterrupted"), "cpu")
    monkeypatch.setenv("DMLREPRO_STOP_AFTER_EPOCH", str(stop_after))
    with pytest.raises(SystemExit):
        frozen.train_frozen(run, RunPaths.of(params, run, tmp / "resumed"), "cpu")
    assert not (tmp / "resumed/model.pt").exists()
    torch.rand(1000)  # the resumed process's generators are wherever they happen to be
    np.random.rand(1000)
    monkeypatch.delenv("DMLREPRO_STOP_AFTER_EPOCH")
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / "resumed"), "cpu")
    return tuple((json.loads((tmp / name / "history.json").read_text()),
                  torch.load(tmp / name / "model.pt", weights_only=False))
                 for name in ("uninterrupted", "resumed"))


def test_a_killed_run_of_a_random_loss_resumes_to_identical_metrics(setup, monkeypatch):
    params, run, tmp = setup
    real = frozen.build_criterion
    monkeypatch.setattr(frozen, "build_criterion", lambda *a, **k: NoisyCriterion(real(*a, **k)))
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / "uninterrupted"), "cpu")
    reference = json.loads((tmp / "uninterrupted/history.json").read_text())

    monkeypatch.setenv("DMLREPRO_STOP_AFTER_EPOCH", "1")
    with pytest.raises(SystemExit):
        frozen.train_frozen(run, RunPaths.of(params, run, tmp / "resumed"), "cpu")
    assert not (tmp / "resumed/model.pt").exists()
    torch.rand(1000)  # the resumed process's global generators are wherever they happen to be
    np.random.rand(1000)
    monkeypatch.delenv("DMLREPRO_STOP_AFTER_EPOCH")
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / "resumed"), "cpu")
    resumed = json.loads((tmp / "resumed/history.json").read_text())
    assert _epochs(resumed) == _epochs(reference)
    assert len(reference["epochs"]) == 3 and all(e["embedding_norm"] > 0 for e in reference["epochs"])


def test_a_non_finite_loss_stops_the_run_with_epoch_step_and_last_loss(setup, monkeypatch):
    params, run, tmp = setup
    real = frozen.build_criterion
    calls = {"n": 0}

    class Exploding(CriterionWrapper):
        def forward(self, z, labels):
            calls["n"] += 1
            loss = self.base(z, labels)
            return loss * float("nan") if calls["n"] == 4 + 3 else loss  # epoch 2, step 3

        def param_groups(self, lr):
            return self.base.param_groups(lr)

    monkeypatch.setattr(frozen, "build_criterion", lambda *a, **k: Exploding(real(*a, **k)))
    with pytest.raises(Diverged) as info:
        frozen.train_frozen(run, RunPaths.of(params, run, tmp / "out"), "cpu")
    msg = str(info.value)
    assert "diverged at epoch 2, step 3" in msg and "the loss is nan" in msg
    assert "last finite loss" in msg and "no model was written" in msg
    assert not (tmp / "out/model.pt").exists()


def test_evaluation_reuses_the_searches_training_made(setup, monkeypatch):
    """metrics.json's val (and, with test scores per epoch, its last and best-on-test epochs) come
    from history.json: only the honest protocol's test split is searched again."""
    from dmlrepro.stages import evaluate as evaluation
    from dmlrepro.evaluation.metrics import evaluate_retrieval

    params, run, tmp = setup
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / "out"), "cpu", test_every_epoch=True)
    searched = []
    real = evaluation.score_set
    monkeypatch.setattr(evaluation, "score_set", lambda embed, feats, eset, *a: searched.append(eset.name) or
                        real(embed, feats, eset, *a))
    metrics = evaluation.evaluate_run(run, RunPaths.of(params, run, tmp / "out"), "cpu", nmi=False, paper_protocol=True,
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
    from dmlrepro.stages import evaluate as evaluation

    params, run, tmp = setup
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / "out"), "cpu")
    searched = []
    real = evaluation.score_set
    monkeypatch.setattr(evaluation, "score_set", lambda embed, feats, eset, *a: searched.append(eset.name) or
                        real(embed, feats, eset, *a))
    assert "test_last_epoch" not in evaluation.evaluate_run(run, RunPaths.of(params, run, tmp / "out"), "cpu")
    assert searched == ["test"]
    model = frozen.load_model(tmp / "out/model.pt")
    metrics = evaluation.evaluate_run(run, RunPaths.of(params, run, tmp / "out"), "cpu", last_epoch=True)
    assert set(metrics["test_last_epoch"]) == set(metrics["test"])
    assert searched == ["test", "test"] + (["test"] if model["last_epoch"] != model["best_epoch"] else [])


def _multi_set_features(path, layout, per_class=6, dim=16, seed=0):
    """Gaussian clusters: classes 0-7 train, 8-11 val, 12-17 evaluation, laid out as VehicleID's
    nested test lists (2 / 4 / 6 classes) or In-Shop's query and gallery (half of each class's images)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(18, dim)) * 3
    labels = np.repeat(np.arange(18), per_class)
    x = (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float16)
    first_half = np.tile(np.arange(per_class) < per_class // 2, 18)
    keeps = {"train": labels < 8, "val": (labels >= 8) & (labels < 12)}
    if layout == "vehicleid":
        keeps.update({"test_800": (labels >= 12) & (labels < 14), "test_1600": (labels >= 12) & (labels < 16),
                      "test_2400": labels >= 12})
    else:
        keeps.update({"query": (labels >= 12) & first_half, "gallery": (labels >= 12) & ~first_half})
    arrays = {"meta": np.array(json.dumps({}))}
    for split, keep in keeps.items():
        arrays.update({f"{split}_features": x[keep][None], f"{split}_labels": labels[keep],
                       f"{split}_rows": np.flatnonzero(keep)})
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return arrays


@pytest.mark.parametrize("layout", ["vehicleid", "inshop"])
def test_every_evaluation_set_is_scored_under_both_protocols(setup, layout):
    """VehicleID: each test list on its own, leave-one-out; In-Shop: queries searched in the gallery
    only. Expected values: independent searches with evaluate_retrieval on the kept weights."""
    from dmlrepro.stages import evaluate as evaluation
    from dmlrepro.evaluation.metrics import evaluate_retrieval

    params, run, tmp = setup
    arrays = _multi_set_features(run.features.path(params), layout)
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / "out"), "cpu", test_every_epoch=True)
    metrics = evaluation.evaluate_run(run, RunPaths.of(params, run, tmp / "out"), "cpu", paper_protocol=True, last_epoch=True)
    model = frozen.load_model(tmp / "out/model.pt")
    history = json.loads((tmp / "out/history.json").read_text())["epochs"]
    ks = run.config["evaluation"]["ks"]

    def search(which, query, gallery=None):
        head = frozen.head_from_model(model, which)
        q = frozen.embed(head, arrays[f"{query}_features"][0], "cpu")
        if gallery is None:
            return evaluate_retrieval(q, arrays[f"{query}_labels"], ks=ks, compute_nmi=False)
        g = frozen.embed(head, arrays[f"{gallery}_features"][0], "cpu")
        return evaluate_retrieval(q, arrays[f"{query}_labels"], g, arrays[f"{gallery}_labels"], ks=ks,
                                  compute_nmi=False)

    sets = {"test_800": ("test_800",), "test_1600": ("test_1600",), "test_2400": ("test_2400",)} \
        if layout == "vehicleid" else {"test": ("query", "gallery")}
    assert {k for k, v in metrics.items() if isinstance(v, dict)} == {"val"} | {
        f"{name}{suffix}" for name in sets for suffix in ("", "_last_epoch", "_paper")}
    for name, splits in sets.items():
        assert metrics[name] == pytest.approx(search("best", *splits))
        scores = [e[name]["recall@1"] for e in history]
        best_on_test = 1 + scores.index(max(scores))  # the first epoch with the best score
        assert metrics[f"{name}_best_epoch"] == best_on_test
        assert metrics[f"{name}_paper"] == pytest.approx(search(f"{name}_best", *splits))
        assert metrics[f"{name}_last_epoch"] == pytest.approx(search("last", *splits))
    if layout == "inshop":  # the gallery mode: a query never finds itself, so R@1 < 1 is possible
        assert metrics["test"]["recall@1"] <= 1.0
