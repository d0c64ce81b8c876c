"""Evaluate a trained run on its validation and test splits and write its metrics JSON.

metrics.json holds, per protocol, the metrics a table can show:
  val, test          epoch selected on validation (the honest protocol, always)
  test_last_epoch    the last epoch's weights (only when a table shows the last-epoch protocol,
                     --last-epoch: it costs one more full search when the epochs differ)
  test_paper         the best-on-test epoch's weights (the papers' protocol; only when trained
                     with --test-every-epoch)
NMI (k-means, the slow part on many-class sets) is computed only when a table using the run asks
for it (--nmi), for the honest and the papers' protocols (never for the last epoch).

No search is repeated: the validation metrics of the selected epoch (and, when trained with test
scores per epoch, the test metrics of the last and best-on-test epochs) are taken from
history.json, which training computed with the same weights and the same metric code; only the
honest protocol's test metrics are computed here, plus another epoch's only when its weights differ.
"""
from __future__ import annotations

import json
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


def _history_epochs(run_dir: Path, cfg_hash: str) -> dict:
    """{epoch: {split: metrics}} from history.json when it belongs to this configuration, else {}."""
    path = run_dir / "history.json"
    if not path.exists():
        return {}
    history = json.loads(path.read_text("utf-8"))
    if history.get("config_hash") != cfg_hash:
        return {}
    return {e["epoch"]: {s: e[s] for s in ("val", "test") if s in e} for e in history["epochs"]}


def evaluate_run(params: dict, run: Run, run_dir: Path, device: str, nmi: bool = False,
                 paper_protocol: bool = False, last_epoch: bool = False) -> dict:
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
    epochs = _history_epochs(run_dir, run.hash)
    best = head_from_model(model, "best")
    test = _split_metrics(best, feats, "test", ks, device, nmi)

    def recorded(epoch: int, split: str, which: str, with_nmi: bool) -> dict:
        """An epoch's metrics on a split: the history's when it has them, else computed now."""
        if epoch == model["best_epoch"] and split == "test":
            return test if with_nmi else {k: v for k, v in test.items() if k != "nmi"}
        if not with_nmi and split in epochs.get(epoch, {}):
            return epochs[epoch][split]
        return _split_metrics(head_from_model(model, which), feats, split, ks, device, with_nmi)

    metrics = {
        "config_hash": run.hash,
        "run": run.id,
        "best_epoch": model["best_epoch"],
        "last_epoch": model["last_epoch"],
        "val": recorded(model["best_epoch"], "val", "best", False),
        "test": test,
    }
    if last_epoch:
        metrics["test_last_epoch"] = recorded(model["last_epoch"], "test", "last", False)
    if paper_protocol:
        metrics["test_best_epoch"] = model["test_best_epoch"]
        metrics["test_paper"] = recorded(model["test_best_epoch"], "test", "test_best", nmi)
    atomic.write_json(run_dir / "metrics.json", metrics)
    return metrics
