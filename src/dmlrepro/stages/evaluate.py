"""Stage `evaluate`: score a trained run on its validation split and evaluation sets; write its
metrics JSON and log it to the run's MLflow training run.

metrics.json holds, per evaluation set (:mod:`dmlrepro.evaluation.sets`: ``test``, or VehicleID's ``test_800`` ...)
and protocol, the metrics a table can show:
  val, <set>         epoch selected on validation (the honest protocol, always)
  <set>_last_epoch   the last epoch's weights (only when a table shows the last-epoch protocol,
                     --last-epoch: it costs one more full search when the epochs differ)
  <set>_paper        the best-on-that-set epoch's weights (the papers' protocol; only when trained
                     with --test-every-epoch)
NMI (k-means, the slow part on many-class sets) is computed only when a table using the run asks
for it (--nmi), for the honest and the papers' protocols (never for the last epoch).

No search is repeated: the validation metrics of the selected epoch (and, when trained with test
scores per epoch, the test metrics of the last and best-on-test epochs) are taken from
history.json, which training computed with the same weights and the same metric code; only the
honest protocol's test metrics are computed here, plus another epoch's only when its weights differ.
"""
from __future__ import annotations

from pathlib import Path

from .. import atomic
from ..backbones import resolve_device
from ..backbones.extract import feature_splits, load_features
from ..errors import DmlReproError
from ..evaluation.sets import EvaluationSet, evaluation_sets, metrics_block, score_set
from ..readers import read_json
from ..study.runs import Run, RunPaths
from ..threads import set_threads
from ..training.frozen import embed, head_from_model, load_model
from .preflight import check_writable

VAL = EvaluationSet("val", "val")


def _history_epochs(run_dir: Path, cfg_hash: str, run_id: str) -> dict:
    """{epoch: {block: metrics}} from history.json when it belongs to this configuration, else {}."""
    path = run_dir / "history.json"
    if not path.exists():
        return {}
    history = read_json(path, "training history", f"dmlrepro train --run {run_id}")
    if not isinstance(history, dict) or history.get("config_hash") != cfg_hash:
        return {}
    return {e["epoch"]: {k: v for k, v in e.items() if isinstance(v, dict)} for e in history["epochs"]}


def _features(paths: RunPaths, run: Run, model: dict, device: str):
    """Frozen regime: the cached features, embedded by the trained head."""
    feat_path = paths.features
    sets = evaluation_sets(feature_splits(feat_path), str(feat_path))
    feats = load_features(feat_path, splits=dict.fromkeys(["val", *(sp for s in sets for sp in s.splits)]))

    def embedder(which: str):
        head = head_from_model(model, which).to(device)
        return lambda x: embed(head, x, device)
    return sets, feats, embedder


def _images(paths: RunPaths, run: Run, model: dict, device: str):
    """Fine-tuned regime: the images' evaluation views, embedded by the fine-tuned network."""
    from ..training.finetune import embed_rows, network_from_model, split_arrays
    from ..training.images import ManifestImages, ViewSettings

    images = ManifestImages(paths.images)
    sets = evaluation_sets(images.splits, str(images.manifest))
    feats = split_arrays(images, ["val", *(sp for s in sets for sp in s.splits)])
    finetune = run.settings.finetune

    def embedder(which: str):
        net = network_from_model(model, which).to(device)
        return lambda rows: embed_rows(net, images, ViewSettings.of(finetune), rows, device, finetune.eval_batch_size,
                                       finetune.workers, finetune.amp)
    return sets, feats, embedder


def evaluate_run(run: Run, paths: RunPaths, device: str, nmi: bool = False, paper_protocol: bool = False,
                 last_epoch: bool = False) -> dict:
    run_dir = paths.out_dir
    model = load_model(run_dir / "model.pt", run.id)
    if model["config_hash"] != run.hash:
        raise DmlReproError(
            f"{run_dir / 'model.pt'} was trained with another configuration (hash {model['config_hash']}, "
            f"the declarations now give {run.hash}); rerun `dmlrepro train --run {run.id}`"
        )
    set_threads(run.settings.evaluation.threads)
    sets, feats, embedder = (_images if run.finetuned else _features)(paths, run, model, device)
    if paper_protocol and any(f"{s.name}_best_state" not in model for s in sets):
        raise DmlReproError(f"{run_dir / 'model.pt'} was trained without test scores per epoch; the papers' "
                            f"protocol needs `dmlrepro train --run {run.id} --test-every-epoch`")
    ks = run.settings.evaluation.ks
    epochs = _history_epochs(run_dir, run.hash, run.id)
    embedders = {}

    def score(which: str, eset: EvaluationSet, with_nmi: bool) -> dict:
        if which not in embedders:
            embedders[which] = embedder(which)
        return score_set(embedders[which], feats, eset, ks, with_nmi)

    metrics = {"config_hash": run.hash, "run": run.id, "best_epoch": model["best_epoch"],
               "last_epoch": model["last_epoch"]}
    for eset in sets:
        test = score("best", eset, nmi)

        def recorded(epoch: int, which: str, with_nmi: bool) -> dict:
            """An epoch's metrics on this set: the history's when it has them, else computed now."""
            if epoch == model["best_epoch"]:
                return test if with_nmi else {k: v for k, v in test.items() if k != "nmi"}
            if not with_nmi and eset.name in epochs.get(epoch, {}):
                return epochs[epoch][eset.name]
            return score(which, eset, with_nmi)

        metrics[eset.name] = test
        if last_epoch:
            metrics[metrics_block(eset.name, "last_epoch")] = recorded(model["last_epoch"], "last", False)
        if paper_protocol:
            best_on_test = model[f"{eset.name}_best_epoch"]
            metrics[f"{eset.name}_best_epoch"] = best_on_test
            metrics[metrics_block(eset.name, "paper")] = recorded(best_on_test, f"{eset.name}_best", nmi)
    metrics["val"] = (epochs.get(model["best_epoch"], {}).get("val")
                      or score("best", VAL, False))
    atomic.write_json(run_dir / "metrics.json", metrics)
    return metrics


def evaluate(params: dict, run: Run, device: str | None = None, nmi: bool = False, paper_protocol: bool = False,
             last_epoch: bool = False, record: bool = True) -> tuple[dict, str | None]:
    """Evaluate `run` into its metrics.json; (the metrics, the MLflow training run it was logged to
    or None)."""
    check_writable(run.dir(params), "metrics file", "paths.runs")
    metrics = evaluate_run(run, RunPaths.of(params, run), resolve_device(device or params["device"]), nmi=nmi,
                           paper_protocol=paper_protocol, last_epoch=last_epoch)
    if not record:
        return metrics, None
    from ..reporting.training_record import log_evaluation

    return metrics, log_evaluation(params, run, run.dir(params))
