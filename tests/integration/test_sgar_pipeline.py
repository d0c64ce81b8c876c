"""SGAR end to end: a real `snakemake` builds a Proxy-Anchor vs Proxy-Anchor + SGAR table on the
tiny fixture (2 epochs), under both selection protocols; the augmenter trains, the metrics exist
and every record names it. (The code variant is a row override like any other: its training is
covered in tests/unit/test_sgar.py; two jobs fewer keep this test short.)"""
from __future__ import annotations

import csv
import json

import pytest

from conftest import run
from mini_study import mini_study  # noqa: F401,F811  (fixture)

pytestmark = pytest.mark.integration

PAPER = """
paper: sgarmini
title: SGAR mini study
tables:
  t:
    caption: Proxy-Anchor without and with SGAR.
    protocols: [honest, paper]
    columns:
      - {key: r1, dataset: glyphs, metric: recall@1, header: R@1}
      - {key: mapr, dataset: glyphs, metric: map@r, header: MAP@R}
    rows:
      - {label: Proxy-Anchor, method: proxy_anchor}
      - {label: Proxy-Anchor + SGAR, method: sgar}
"""


def test_snakemake_trains_proxy_anchor_with_sgar_and_labels_it(mini_study):
    ws = mini_study(PAPER, ("proxy_anchor", "sgar"))
    run(["snakemake", "--cores", "2", "results/tables/sgarmini/t.md"], ws)

    runs = ws / "results/runs/glyphs/efficientnet_lite0"
    folders = {p.parent.parent.name: p.parent for p in runs.glob("*/seed0/metrics.json")}
    assert set(folders) == {"proxy_anchor", "sgar"}
    metrics = json.loads((folders["sgar"] / "metrics.json").read_text())
    assert {"recall@1", "map@r"} <= set(metrics["test"]) and 1 <= metrics["best_epoch"] <= 2
    assert {"recall@1", "map@r"} <= set(metrics["test_paper"])
    history = json.loads((folders["sgar"] / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2] and all(e["loss"] > 0 for e in history["epochs"])
    base_loss = json.loads((folders["proxy_anchor"] / "history.json").read_text())["epochs"][0]["loss"]
    sgar_loss = json.loads((folders["sgar"] / "history.json").read_text())["epochs"][0]["loss"]
    assert sgar_loss != base_loss  # the augmenter's terms are in the loss

    md = (ws / "results/tables/sgarmini/t.md").read_text()
    assert "| Proxy-Anchor + SGAR |" in md
    rows = list(csv.DictReader((ws / "results/tables/sgarmini/t.csv").open()))
    assert [(r["protocol"], r["row"]) for r in rows] == [(p, r) for p in ("honest", "paper")
                                                         for r in ("Proxy-Anchor", "Proxy-Anchor + SGAR")]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    training = client.search_runs([client.get_experiment_by_name("training-runs/glyphs").experiment_id])
    by_variant = {r.data.params.get("method.augmenter.sgar.variant"): r for r in training}
    assert set(by_variant) == {None, "paper"}
    assert by_variant["paper"].data.tags["method_note"] == "SGAR"
    assert by_variant["paper"].data.params["method.augmenter.sgar.N"] == "5"
    assert "method_note" not in by_variant[None].data.tags
