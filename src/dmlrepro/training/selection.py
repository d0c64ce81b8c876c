"""Which epoch's weights a run keeps, shared by both regimes.

The honest protocol keeps the epoch with the best validation score; with test scores per epoch,
each evaluation set also keeps its best-on-that-set epoch (the papers' protocol). Test scores
never touch the validation choice.
"""
from __future__ import annotations

from typing import Callable


class Selection:
    def __init__(self, metric: str, test_sets: list[str], saved: dict | None = None):
        self.metric = metric
        if saved is not None:
            self.best, self.test_best = saved["best"], saved["test_best"]
        else:
            self.best = {"epoch": 0, "score": -1.0, "state": None}
            self.test_best = {name: {"epoch": 0, "score": -1.0, "state": None} for name in test_sets}

    def update(self, epoch: int, scored: dict, state: Callable[[], dict]) -> None:
        """Keep `state()` (a copy of the weights) where this epoch is the best so far."""
        if scored["val"][self.metric] > self.best["score"]:
            self.best = {"epoch": epoch, "score": scored["val"][self.metric], "state": state()}
        for name, kept in self.test_best.items():
            if scored[name][self.metric] > kept["score"]:
                self.test_best[name] = {"epoch": epoch, "score": scored[name][self.metric], "state": state()}

    def checkpoint(self) -> dict:
        return {"best": self.best, "test_best": self.test_best}

    def model_entries(self, history: dict) -> dict:
        """model.pt's best/test-best entries (and the history's test-best epochs)."""
        model = {"best_state": self.best["state"], "best_epoch": self.best["epoch"]}
        history["best_epoch"] = self.best["epoch"]
        for name, kept in self.test_best.items():
            history[f"{name}_best_epoch"] = kept["epoch"]
            model.update({f"{name}_best_state": kept["state"], f"{name}_best_epoch": kept["epoch"]})
        return model
