"""Training regimes: the frozen regime trains a head on cached features (:mod:`.frozen`), the
fine-tuning regime trains backbone and head end to end from images (:mod:`.finetune`)."""
from __future__ import annotations


def train(params: dict, run, out_dir, device: str, test_every_epoch: bool = False, tracker=None) -> dict:
    """Train one run in its regime; write model.pt and history.json into out_dir."""
    if run.finetuned:
        from .finetune import train_finetune_run

        return train_finetune_run(params, run, out_dir, device, test_every_epoch=test_every_epoch, tracker=tracker)
    from .frozen import train_run

    return train_run(params, run, out_dir, device, test_every_epoch=test_every_epoch, tracker=tracker)
