"""IAA end to end: a real `snakemake` builds MS vs MS + IAA (paper and code variants) on the tiny
fixture (2 epochs, both protocols); the augmenter trains, the table and the MLflow records name it."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import run
from mini_study import mini_study  # noqa: F401,F811  (fixture)

pytestmark = pytest.mark.integration

PAPER = """
paper: iaamini
title: IAA mini study
tables:
  t:
    caption: MS without and with IAA.
    protocols: [honest, paper]
    columns:
      - {key: r1, dataset: glyphs, metric: recall@1, header: R@1}
      - {key: mapr, dataset: glyphs, metric: map@r, header: MAP@R}
    rows:
      - {label: MS, method: multi_similarity, published: {r1: 56.2}}
      - {label: MS + IAA, method: multi_similarity_iaa, published: {r1: 62.1}}
      - {label: MS + IAA (code), method: multi_similarity_iaa, overrides: {method.augmenter.iaa.variant: code}}
    claims:
      - {base: MS, method: MS + IAA}
"""


def test_snakemake_trains_ms_with_iaa_in_both_variants(mini_study):
    ws = mini_study(PAPER, ("multi_similarity", "multi_similarity_iaa"))
    run(["snakemake", "--cores", "2"], ws)  # the table and its paper's claims page

    runs = ws / "results/runs/glyphs/efficientnet_lite0"
    folders = sorted(p.parent.parent.name for p in runs.glob("*/seed0/metrics.json"))
    assert len(folders) == 3 and folders[0] == "multi_similarity" and folders[1] == "multi_similarity_iaa"
    code_folder = runs / folders[2] / "seed0"
    assert folders[2].startswith("multi_similarity_iaa-")  # the override names its own folder
    for folder in (runs / "multi_similarity_iaa/seed0", code_folder):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert {"recall@1", "map@r"} <= set(metrics["test"]) and "test_paper" in metrics
        history = json.loads((folder / "history.json").read_text())
        assert [e["epoch"] for e in history["epochs"]] == [1, 2] and all(e["loss"] > 0 for e in history["epochs"])
    import torch

    model = torch.load(code_folder / "model.pt", weights_only=False)
    assert model["config"]["method"]["augmenter"]["iaa"]["variant"] == "code"

    md = (ws / "results/tables/iaamini/t.md").read_text()
    assert "| MS + IAA |" in md and "| MS + IAA (code) |" in md and "62.1" in md
    rows = list(csv.DictReader((ws / "results/tables/iaamini/t.csv").open()))
    assert [(r["protocol"], r["row"]) for r in rows] == [
        (p, row) for p in ("honest", "paper") for row in ("MS", "MS + IAA", "MS + IAA (code)")]
    assert len({r["r1_mean"] for r in rows}) > 1 or len({r["mapr_mean"] for r in rows}) > 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    training = client.search_runs([client.get_experiment_by_name("training-runs/glyphs").experiment_id])
    notes = sorted(r.data.tags.get("method_note", "-") for r in training)
    assert notes == ["-", "IAA", "IAA"]
    variants = sorted(r.data.params.get("method.augmenter.iaa.variant", "-") for r in training)
    assert variants == ["-", "code", "paper"]  # the defaults are filled in: the record names the variant

    # the claims: one seed gives no interval, so the verdict is unresolved, on both protocols
    claims = list(csv.DictReader((ws / "results/claims/iaamini.csv").open()))
    assert [(c["protocol"], c["verdict"], c["n"], c["published_diff"]) for c in claims] == [
        ("honest", "unresolved", "1", "5.9"), ("paper", "unresolved", "1", "5.9")]
    assert "## Claims" in md and "MS + IAA vs MS" in md
    exp = client.get_experiment_by_name("claims/iaamini")
    entries = client.search_runs([exp.experiment_id])
    assert sorted(e.data.tags["verdict"] for e in entries) == ["unresolved", "unresolved"]
    assert all(e.data.metrics["published_diff"] == pytest.approx(5.9) for e in entries)

    # a table entry shows its training run's dataset, source and time span in the UI's columns
    table_entries = client.search_runs([client.get_experiment_by_name("iaamini/t").experiment_id])
    by_id = {r.info.run_id: r for r in training}
    for entry in table_entries:
        trained = by_id[entry.data.tags["training_run_id"]]
        assert (entry.info.start_time, entry.info.end_time) == (trained.info.start_time, trained.info.end_time)
        assert [i.dataset.digest for i in entry.inputs.dataset_inputs] == \
            [i.dataset.digest for i in trained.inputs.dataset_inputs]
        assert entry.data.tags["mlflow.source.name"] == "dmlrepro train"
