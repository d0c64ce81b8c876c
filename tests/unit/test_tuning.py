"""benchmarks/bench_methods_tuning.py: the methods' hyper-parameters are chosen on validation only
(the test split is never read) by the baselines' rule (the paper's value kept unless another beats
it by more than the tolerance), stage after stage; results merge into the file."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from dmlrepro.errors import DmlReproError
from dmlrepro.study.runs import resolve_run
from dmlrepro.training import frozen
from dmlrepro.study.runs import RunPaths
from conftest import REPO
from test_training import setup  # noqa: F401  (fixture: synthetic features, a shrunk schedule)

_spec = importlib.util.spec_from_file_location("bench_methods_tuning", REPO / "benchmarks/bench_methods_tuning.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture
def no_test_split(setup, monkeypatch):  # noqa: F811
    """The fixture's features without their test arrays, and a loader that refuses any other split
    than train and val (so the test split can be read neither from the file nor through the loader)."""
    params, run, tmp = setup
    path = run.features.path(params)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("test_")}
    assert len(arrays) < len(np.load(path).files)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    load = frozen.load_features

    def only_train_and_val(path, splits=None):
        if splits is None or set(splits) - {"train", "val"}:
            raise AssertionError(f"the tuning asked for the splits {splits}")
        return load(path, splits)

    def no_split_listing(path):
        raise AssertionError("the tuning listed the evaluation sets (a test-split read)")

    monkeypatch.setattr(frozen, "load_features", only_train_and_val)
    monkeypatch.setattr(frozen, "feature_splits", no_split_listing)
    return params, tmp


@pytest.mark.parametrize("method", sorted(bench.METHODS))
def test_the_tuning_trains_and_chooses_without_the_test_split(no_test_split, method):
    params, _ = no_test_split
    base = bench.METHODS[method]["bases"][0]
    # each stage on its paper value and one other: every stage, the reuse, the real trainer
    stages = [(key, grid[:2]) for key, grid in bench.METHODS[method]["stages"]]
    entry = bench.tune_base(params, "glyphs", base, stages, epochs=2, tolerance=0.3)
    for stage in entry["stages"]:
        assert [len(r["val_r1"]) for r in stage["runs"]] == [2, 2]
        assert stage["chosen"] in stage["values"]
    assert set(entry["chosen"]) == {key for key, _ in stages}
    assert entry["trained_runs"] == 1 + sum(len(g) - 1 for _, g in stages)  # a later stage reuses a run


def test_the_guard_does_catch_a_test_split_read(no_test_split):
    params, _ = no_test_split
    run = resolve_run(params, "glyphs", "contrastive_da", 0, [])
    with pytest.raises((AssertionError, DmlReproError)):
        frozen.train_frozen(run, RunPaths.of(params, run, Path(params["paths"]["runs"]) / "guard"), "cpu", test_every_epoch=True)


@pytest.mark.parametrize("peaks, chosen", [
    ({0.8: 84.0, 0.1: 84.3, 0.2: 84.2}, 0.8),        # a gain of exactly the tolerance: the paper's value
    ({0.8: 84.0, 0.1: 84.29, 0.2: 83.0}, 0.8),       # within it
    ({0.8: 84.0, 0.1: 84.31, 0.2: 84.5}, 0.2),       # beyond it: the best value
    ({0.8: 84.0, 0.1: 84.6, 0.2: 84.6}, 0.1),        # a tie goes to the earlier value of the grid
    ({0.8: 85.0, 0.1: 84.0, 0.2: 80.0}, 0.8),        # the paper's value is the best
])
def test_the_rule_keeps_the_papers_value_within_the_tolerance(peaks, chosen):
    assert bench.choose(peaks, 0.8, 0.3) == chosen


def _curves(table):
    """A fake trainer: the validation curve of a configuration from {(weight, eta): peak}."""
    calls = []

    def runner(jobs):
        out = []
        for _, _, method, overrides, _ in jobs:
            key = (overrides["method.regularizer.density.weight"], overrides.get("method.regularizer.density.eta", 0.5))
            calls.append(key)
            peak = table[key]
            curve = [round(peak - 2, 2), peak, round(peak - 0.1, 2)]
            out.append({"method": method, "overrides": overrides, "val_r1": curve, "best": peak, "best_epoch": 2,
                        "seconds": 1.0, "cpu_seconds": 1.0})
        return out
    return runner, calls


def test_stages_run_at_the_chosen_values_and_record_every_curve(setup):  # noqa: F811
    params, _, _ = setup
    stages = (("method.regularizer.density.weight", (1.0, 0.1, 3.0)), ("method.regularizer.density.eta", (0.5, 0.25, 1.0)))
    table = {(1.0, 0.5): 80.0, (0.1, 0.5): 80.2, (3.0, 0.5): 81.0,   # weight 3 wins by 1.0 point
             (3.0, 0.25): 81.2, (3.0, 1.0): 80.0}                     # eta 0.25: +0.2 only, 0.5 kept
    runner, calls = _curves(table)
    entry = bench.tune_base(params, "glyphs", "contrastive_da", stages, 20, 0.3, runner=runner)
    assert calls == [(1.0, 0.5), (0.1, 0.5), (3.0, 0.5), (3.0, 0.25), (3.0, 1.0)]  # (3.0, 0.5) trained once
    assert entry["chosen"] == {"method.regularizer.density.weight": 3.0, "method.regularizer.density.eta": 0.5}
    assert entry["differs_from_paper"] == {"method.regularizer.density.weight": True,
                                           "method.regularizer.density.eta": False}
    eta = entry["stages"][1]
    assert eta["at"] == {"method.regularizer.density.weight": 3.0}
    assert [p["best"] for p in eta["peaks"]] == [81.0, 81.2, 80.0] and eta["chosen"] == 0.5
    assert "reused" in eta["runs"][0] and eta["runs"][1]["val_r1"] == [79.2, 81.2, 81.1]
    assert all(len(s["runs"]) == 3 for s in entry["stages"])
    assert entry["chosen_best"] == 81.0 and entry["paper_best"] == 80.0
    # the schedule is the baselines' (milestones at 60 % and 80 %), on top of the base's own settings
    assert entry["stages"][0]["runs"][0]["overrides"]["train.lr_milestones"] == [12, 16]


def test_results_merge_into_the_file(tmp_path):
    out = tmp_path / "da_tuning.json"
    bench.write_entry(out, "da", "glyphs", "npair_da", {"chosen": {"w": 1}}, "f1")
    bench.write_entry(out, "da", "glyphs_sop", "npair_da", {"chosen": {"w": 3}}, "f2")
    bench.write_entry(out, "da", "glyphs", "triplet_da", {"chosen": {"w": 0.1}}, "f1")
    bench.write_entry(out, "da", "glyphs", "npair_da", {"chosen": {"w": 10}}, "f1")  # a rerun replaces its own
    report = json.loads(out.read_text())
    assert report["method"] == "da" and "rule" in report
    assert {d: {b: e["chosen"] for b, e in v.items()} for d, v in report["datasets"].items()} == {
        "glyphs": {"npair_da": {"w": 10}, "triplet_da": {"w": 0.1}}, "glyphs_sop": {"npair_da": {"w": 3}}}
    assert [p.name for p in tmp_path.iterdir()] == ["da_tuning.json"]  # no temporary left behind
