"""Evaluate a trained run on its validation and test splits and write its metrics JSON.

metrics.json holds, per protocol, the metrics a table can show:
  val, test          epoch selected on validation (the honest protocol, always)
  test_last_epoch    the last epoch's weights
  test_paper         the best-on-test epoch's weights (the papers' protocol; only when trained
                     with --test-every-epoch)
NMI (k-means, the slow part on many-class sets) is computed only when a table using the run asks
for it (--nmi), for the honest and the papers' protocols (never for the last epoch).
"""
from __future__ import annotations

from pathlib import Path

from .. import atomic
from ..backbones.extract import load_features
from ..errors import DmlReproError
from ..study.runs import Run
from ..training.frozen import embed, head_from_model, load_model, set_threads
from .metrics import evaluate_retrieval


def _split_metrics(head, feats: dict, split: str, ks, device: str, compute_nmi: bool) -> dict:
    emb = embed(head.to(device), feats[f"{split}_features"][0], device)
    return evaluate_retrieval(emb, feats[f"{split}_labels"], ks=ks, compute_nmi=compute_nmi)


def evaluate_run(params: dict, run: Run, run_dir: Path, device: str, nmi: bool = False,
                 paper_protocol: bool = False) -> dict:
    model = load_model(run_dir / "model.pt")
    if model["config_hash"] != run.hash:
        raise DmlReproError(
            f"{run_dir / 'model.pt'} was trained with another configuration (hash {model['config_hash']}, "
            f"the declarations now give {run.hash}); rerun `dmlrepro train --run {run.id}`"
        )
    if paper_protocol and "test_best_state" not in model:
        raise DmlReproError(f"{run_dir / 'model.pt'} was trained without test scores per epoch; the papers' "
                            f"protocol needs `dmlrepro train --run {run.id} --test-every-epoch`")
    feats = load_features(run.features.path(params), splits=("val", "test"))
    ks = run.config["evaluation"]["ks"]
    set_threads(run.config["evaluation"].get("threads", params["evaluation"].get("threads", 1)))
    best = head_from_model(model, "best")
    test = _split_metrics(best, feats, "test", ks, device, nmi)
    same_last = model["last_epoch"] == model["best_epoch"]  # same weights: no second search
    metrics = {
        "config_hash": run.hash,
        "run": run.id,
        "best_epoch": model["best_epoch"],
        "last_epoch": model["last_epoch"],
        "val": _split_metrics(best, feats, "val", ks, device, False),
        "test": test,
        "test_last_epoch": ({k: v for k, v in test.items() if k != "nmi"} if same_last else
                            _split_metrics(head_from_model(model, "last"), feats, "test", ks, device, False)),
    }
    if paper_protocol:
        metrics["test_best_epoch"] = model["test_best_epoch"]
        metrics["test_paper"] = (test if model["test_best_epoch"] == model["best_epoch"] else
                                 _split_metrics(head_from_model(model, "test_best"), feats, "test", ks, device, nmi))
    atomic.write_json(run_dir / "metrics.json", metrics)
    return metrics
