"""Evaluate a trained run on its validation and test splits and write its metrics JSON."""
from __future__ import annotations

from pathlib import Path

from . import atomic
from .config import config_hash, features_path, run_config
from .errors import DmlReproError
from .evaluation import evaluate_retrieval
from .features import load_features
from .train import embed, head_from_model, load_model, set_threads


def _split_metrics(head, feats: dict, split: str, ks, device: str, compute_nmi: bool = True) -> dict:
    emb = embed(head.to(device), feats[f"{split}_features"][0], device)
    return evaluate_retrieval(emb, feats[f"{split}_labels"], ks=ks, compute_nmi=compute_nmi)


def evaluate_run(params: dict, dataset: str, method: str, seed: int, run_dir: Path, device: str) -> dict:
    cfg = run_config(params, dataset, method, seed)
    cfg_hash = config_hash(cfg)
    model = load_model(run_dir / "model.pt")
    if model["config_hash"] != cfg_hash:
        raise DmlReproError(
            f"{run_dir / 'model.pt'} was trained with another configuration (hash {model['config_hash']}, "
            f"params.yaml now gives {cfg_hash}); rerun `dmlrepro train --dataset {dataset} --method {method} --seed {seed}`"
        )
    feats = load_features(features_path(params, dataset), splits=("val", "test"))
    ks = cfg["evaluation"]["ks"]
    set_threads(params["evaluation"].get("threads", 1))
    best = head_from_model(model, "best")
    test = _split_metrics(best, feats, "test", ks, device)
    if model["last_epoch"] == model["best_epoch"]:
        test_last = {k: v for k, v in test.items() if k != "nmi"}  # same weights: no second search
    else:
        test_last = _split_metrics(head_from_model(model, "last"), feats, "test", ks, device, compute_nmi=False)
    metrics = {
        "config_hash": cfg_hash,
        "best_epoch": model["best_epoch"],
        "last_epoch": model["last_epoch"],
        # NMI (k-means, the slow part) is reported on the test split of the selected epoch only
        "val": _split_metrics(best, feats, "val", ks, device, compute_nmi=False),
        "test": test,
        "test_last_epoch": test_last,
    }
    atomic.write_json(run_dir / "metrics.json", metrics)
    return metrics
