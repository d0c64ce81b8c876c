"""DA (reconstructed) end to end: a real `snakemake` builds a Triplet vs Triplet + DA table on the
tiny fixture (2 epochs); the regulariser trains, the metrics exist and every record names it."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import run
from mini_study import mini_study  # noqa: F401,F811  (fixture)

pytestmark = pytest.mark.integration

PAPER = """
paper: damini
title: DA mini study
tables:
  t:
    caption: Triplet without and with the reconstructed density regulariser.
    notes:
      - Published pairs go here, under no row.
    columns:
      - {key: r1, dataset: glyphs, metric: recall@1, header: R@1}
      - {key: nmi, dataset: glyphs, metric: nmi, header: NMI}
    rows:
      - {label: Triplet, method: triplet}
      - {label: Triplet + DA (reconstructed), method: triplet_da}
"""


def test_snakemake_trains_triplet_with_da_and_labels_it(mini_study):
    ws = mini_study(PAPER, ("triplet", "triplet_da"))
    run(["snakemake", "--cores", "2", "results/tables/damini/t.md"], ws)

    folder = ws / "results/runs/glyphs/efficientnet_lite0/triplet_da/seed0"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert {"recall@1", "nmi"} <= set(metrics["test"]) and 1 <= metrics["best_epoch"] <= 2
    history = json.loads((folder / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2] and all(e["loss"] > 0 for e in history["epochs"])

    md = (ws / "results/tables/damini/t.md").read_text()
    assert "| Triplet + DA (reconstructed) |" in md and "1. Published pairs go here, under no row." in md
    rows = list(csv.DictReader((ws / "results/tables/damini/t.csv").open()))
    assert [r["row"] for r in rows] == ["Triplet", "Triplet + DA (reconstructed)"]
    assert rows[0]["r1_mean"] != rows[1]["r1_mean"] or rows[0]["nmi_mean"] != rows[1]["nmi_mean"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    training = client.search_runs([client.get_experiment_by_name("training-runs/glyphs").experiment_id])
    by_method = {r.data.tags["method"]: r for r in training}
    assert by_method["triplet_da"].data.tags["method_note"] == "DA (reconstructed)"
    assert "method_note" not in by_method["triplet"].data.tags
    assert by_method["triplet_da"].data.params["method.regularizer.density.weight"] == "1.0"
    entries = client.search_runs([client.get_experiment_by_name("damini/t").experiment_id],
                                 "tags.method = 'triplet_da'")
    assert [e.data.tags["method_note"] for e in entries] == ["DA (reconstructed)"]
