"""Stage `train`: train one run in its regime (a head on cached features, or end to end), with the
live MLflow record of the training run unless asked not to."""
from __future__ import annotations

import signal

from ..backbones import resolve_device
from ..study.runs import Run, RunPaths
from ..training import distributed
from .preflight import check_outputs, training_outputs


def train(params: dict, run: Run, device: str | None = None, test_every_epoch: bool = False,
          record: bool = True) -> dict:
    """Train `run` into its folder (model.pt, history.json); returns the training summary."""
    paths = RunPaths.of(params, run)
    check_outputs(training_outputs(run, paths, test_every_epoch))
    device = resolve_device(device or params["device"])
    regime = _regime(run)
    if not record or not distributed.from_environment().is_main:  # under torchrun, rank 0 alone keeps the record
        return regime(run, paths, device, test_every_epoch=test_every_epoch)
    from ..reporting.training_record import TrainingTracker

    _raise_on_sigterm()
    with TrainingTracker(params, run, test_every_epoch=test_every_epoch) as tracker:
        summary = regime(run, paths, device, test_every_epoch=test_every_epoch, tracker=tracker)
    return {**summary, "mlflow_run_id": tracker.run_id}


def _regime(run: Run):
    if run.finetuned:
        from ..training.finetune import train_finetune

        return train_finetune
    from ..training.frozen import train_frozen

    return train_frozen


def _raise_on_sigterm() -> None:
    """SIGTERM (what Snakemake sends a cancelled job) raises SystemExit, so the MLflow run is marked
    KILLED on the way out; a second SIGTERM kills at once."""
    def handler(signum, frame):
        signal.signal(signum, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
