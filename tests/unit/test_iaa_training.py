"""IAA inside the trainer: a killed MS + IAA run resumes to identical metrics (its class statistics
are checkpointed, its Gaussian draws re-seeded per epoch), and the statistics are refreshed on the
epochs the schedule names, from the whole training set."""
from __future__ import annotations

import json

import pytest
import torch

from dmlrepro.methods.iaa import IntraClassAugmenter
from dmlrepro.study.runs import resolve_run
from dmlrepro.training import frozen
from dmlrepro.study.runs import RunPaths
from test_training import _epochs, setup, train_killed_and_resumed  # noqa: F401  (fixture)


def _iaa_run(params, **iaa):
    params["methods"]["multi_similarity_iaa"]["augmenter"]["iaa"].update(iaa)
    params["methods"]["multi_similarity_iaa"]["train"] = {"lr": 1e-2}
    params["train"]["epochs"] = 4
    return resolve_run(params, "glyphs", "multi_similarity_iaa", 0, [])


def test_a_killed_ms_iaa_run_resumes_to_identical_metrics(setup, monkeypatch):  # noqa: F811
    params, _, tmp = setup
    # statistics at epochs 1 and 3: after the kill at epoch 1, epoch 2 runs on checkpointed statistics
    run = _iaa_run(params, update_interval=2, copies=2)
    (reference, reference_model), (resumed, model) = train_killed_and_resumed(params, run, tmp, monkeypatch)
    assert _epochs(resumed) == _epochs(reference) and len(reference["epochs"]) == 4
    for key, value in reference_model["best_state"].items():
        assert torch.equal(model["best_state"][key], value), key


def test_statistics_are_refreshed_on_schedule_from_every_training_image(setup, monkeypatch):  # noqa: F811
    params, _, tmp = setup
    run = _iaa_run(params, update_interval=3)  # epochs 1 and 4 of 4
    calls = []
    real = IntraClassAugmenter.update_statistics

    def spy(self, z, labels):
        calls.append((len(z), sorted(torch.bincount(labels).tolist())))
        return real(self, z, labels)

    monkeypatch.setattr(IntraClassAugmenter, "update_statistics", spy)
    frozen.train_frozen(run, RunPaths.of(params, run, tmp / "out"), "cpu")
    # the fixture's training split: classes 0-7, 6 images each (one view), every image once
    assert calls == [(48, [6] * 8), (48, [6] * 8)]


IAA_TABLE = """
paper: demo
title: demo
tables:
  t:
    columns: [{key: r1, dataset: glyphs, metric: recall@1}]
    rows:
      - {label: MS + IAA, method: multi_similarity_iaa}
      - {label: MS + IAA (code), method: multi_similarity_iaa, overrides: {method.augmenter.iaa.variant: code}}
"""


def test_every_iaa_argument_is_a_dvc_param_and_defaults_name_the_same_run(tmp_path):
    from dmlrepro.methods.iaa import SCHEMA
    from dmlrepro.study import load_study
    from dmlrepro.study.dvc_yaml import build_dvc_yaml
    from studyutil import study_params, write_paper

    params = study_params(tmp_path, seeds=(0,))
    write_paper(params, IAA_TABLE)
    params["tables"], params["figures"] = ["demo/t"], []
    study = load_study(params)
    stages = build_dvc_yaml(study)["stages"]
    prefix = "methods.multi_similarity_iaa.augmenter.iaa."
    paper = stages["train-glyphs-efficientnet_lite0-multi_similarity_iaa-seed0"]["params"]
    assert {prefix + key for key in SCHEMA} <= set(paper)  # `dvc exp run -S` reaches every argument
    code = next(v["params"] for k, v in stages.items()
                if k.startswith("train-glyphs-efficientnet_lite0-multi_similarity_iaa-") and k != "train-glyphs-efficientnet_lite0-multi_similarity_iaa-seed0")
    assert prefix + "variant" not in code and prefix + "lam" in code  # the row declares the variant itself

    # params.yaml writes every argument out; leaving them out must name the same run
    written = study.table("demo/t").rows[0].runs["glyphs"][0]
    params["methods"]["multi_similarity_iaa"]["augmenter"] = {"iaa": {"lam": 0.8}}
    short = load_study(params).table("demo/t").rows[0].runs["glyphs"][0]
    assert short.hash == written.hash
    params["methods"]["multi_similarity_iaa"]["augmenter"] = {"iaa": {"lam": 0.7}}
    assert load_study(params).table("demo/t").rows[0].runs["glyphs"][0].hash != written.hash


def test_params_yaml_writes_out_every_wrapper_argument():
    """DVC's `exp run -S` only reaches keys params.yaml has: every IAA / SGAR / DA method there
    lists all of its wrapper's arguments (the schema's keys, an independent list)."""
    import yaml

    from conftest import REPO
    from dmlrepro.methods import WRAPPER_KEYS

    methods = yaml.safe_load((REPO / "params.yaml").read_text())["methods"]
    wrapped = 0
    for name, method in methods.items():
        for key, registry in WRAPPER_KEYS.items():
            for wrapper, args in (method.get(key) or {}).items():
                assert set(args) == set(registry.metadata(wrapper)["schema"]), f"methods.{name}.{key}.{wrapper}"
                wrapped += 1
    assert wrapped >= 3 + 6 + 3 + 1  # IAA's main and Table X methods, DA's three, SGAR
