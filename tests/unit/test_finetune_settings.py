"""The fine-tuning regime's settings: each regime's section counts only for its runs, the authors'
settings reach a paper's runs on a real benchmark (values from ../shared/PAPERS.md), both engines
feed fine-tuned runs the images, and the image pipeline is seeded per view."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, tiny_params
from dmlrepro.errors import DmlReproError
from dmlrepro.study import load_study
from dmlrepro.study.dvc_yaml import build_dvc_yaml
from dmlrepro.study.runs import resolve_run
from dmlrepro.training.images import EvaluationViews, TrainingViews, ViewSettings, evaluation_view, loader
from dmlrepro.training.sampler import RandomBatchSampler
from studyutil import study_params, write_paper


def _runs(params, regime):
    params = copy.deepcopy(params)
    params["regime"] = regime
    return resolve_run(params, "glyphs", "triplet", 0)


def test_each_regime_hashes_only_its_own_settings(tmp_path):
    params = study_params(tmp_path)
    frozen, tuned = _runs(params, "frozen"), _runs(params, "finetune")
    assert "finetune" not in frozen.config and "extract" in frozen.config
    assert "extract" not in tuned.config and tuned.config["finetune"]["crop_scale"] == [0.16, 1.0]
    assert tuned.finetuned and not frozen.finetuned

    changed = copy.deepcopy(params)
    changed["finetune"]["crop_scale"] = [0.08, 1.0]
    assert _runs(changed, "frozen").hash == frozen.hash and _runs(changed, "finetune").hash != tuned.hash
    changed = copy.deepcopy(params)
    changed["extract"]["crop_scale"] = [0.3, 1.0]
    assert _runs(changed, "frozen").hash != frozen.hash and _runs(changed, "finetune").hash == tuned.hash
    changed = copy.deepcopy(params)
    changed["finetune"].update({"workers": 9, "eval_batch_size": 7, "amp": False})  # how the machine runs it
    assert _runs(changed, "finetune").hash == tuned.hash


def test_a_backbone_without_weights_takes_the_file_params_yaml_names(tmp_path):
    params = study_params(tmp_path)
    params["weights"]["googlenet"] = "/data/weights/googlenet-1378be20.pth"
    params["backbone"] = {"name": "googlenet", "weights": None}
    assert resolve_run(params, "glyphs", "triplet", 0).config["backbone"]["weights"] == \
        "/data/weights/googlenet-1378be20.pth"
    params["backbone"]["weights"] = "/mine.pth"  # an explicit file wins
    assert resolve_run(params, "glyphs", "triplet", 0).config["backbone"]["weights"] == "/mine.pth"


def _repository_study(tmp_path, roots=("cub200",)):
    params = tiny_params(seeds=(0,))
    params["paths"]["papers"] = str(REPO / "workflow/papers")
    for name in roots:
        params["datasets"][name]["root"] = str(tmp_path / name)
    return params, load_study(params)


def test_the_authors_settings_reach_a_papers_runs_on_a_real_benchmark(tmp_path):
    params, study = _repository_study(tmp_path)
    # IAA (PAPERS.md, run.py): GoogLeNet, Adam 5e-5, wd 1e-5, x0.2 at 40/60/80, 100 epochs, 128 = 32 x 4, 512-d
    ms = study.table("iaa/table3").rows[0].runs["cub200"][0].config
    assert ms["regime"] == "finetune" and ms["backbone"]["name"] == "googlenet"
    assert (ms["train"]["optimizer"], ms["train"]["lr"], ms["train"]["weight_decay"]) == ("adam", 5e-5, 1e-5)
    assert (ms["train"]["lr_milestones"], ms["train"]["lr_gamma"], ms["train"]["epochs"]) == ([40, 60, 80], 0.2, 100)
    assert (ms["train"]["batch_size"], ms["train"]["m_per_class"], ms["train"]["embedding_dim"]) == (128, 4, 512)
    assert ms["finetune"]["crop_scale"] == [0.16, 1.0] and ms["finetune"]["frozen_bn"] is True
    # a table's own real settings come after the paper's: Table IV's published rows are BN-Inception, batch 256
    t4 = study.table("iaa/table4").rows[0].runs["cub200"][0].config
    assert (t4["backbone"]["name"], t4["train"]["batch_size"], t4["train"]["lr"]) == ("bn_inception", 256, 5e-5)
    # SGAR (code defaults): BN-Inception GAP+GMP, AdamW 1e-4 / wd 1e-4, proxies x100, StepLR 10 x0.5,
    # 60 epochs, batch 150 shuffled, 1 warm-up epoch, clip 10
    sgar = next(r for r in study.table("sgar/main").rows if r.method == "sgar").runs["cub200"][0].config
    assert (sgar["backbone"]["name"], sgar["backbone"]["pooling"]) == ("bn_inception", "avg+max")
    assert (sgar["train"]["optimizer"], sgar["train"]["lr"], sgar["train"]["weight_decay"]) == ("adamw", 1e-4, 1e-4)
    assert sgar["method"]["loss_lr_multiplier"] == 100
    assert (sgar["train"]["lr_milestones"], sgar["train"]["lr_gamma"], sgar["train"]["epochs"]) == \
        ([10, 20, 30, 40, 50], 0.5, 60)
    assert (sgar["train"]["sampling"], sgar["train"]["batch_size"]) == ("random", 150)
    assert (sgar["finetune"]["warmup_epochs"], sgar["finetune"]["grad_clip"]) == (1, 10)
    # the stand-in columns keep params.yaml's frozen regime
    stand_in = study.table("iaa/table3").rows[0].runs
    assert all(r.config["regime"] == "frozen" for d, runs in stand_in.items() if d != "cub200" for r in runs)
    # the same method on the same dataset in two papers: two runs, each with its paper's settings
    pa_iaa = study.table("iaa/table4").rows[1].runs["cub200"][0]
    pa_sgar = next(r for r in study.table("sgar/main").rows if r.method == "proxy_anchor").runs["cub200"][0]
    assert pa_iaa.id != pa_sgar.id and pa_iaa.config["train"]["optimizer"] != pa_sgar.config["train"]["optimizer"]


def test_one_methods_real_settings_and_the_resize_before_the_crop_follow_the_released_code(tmp_path):
    # IAA run.py (PAPERS.md): lr 3e-5 for Contrastive on CUB, 5e-5 for the other losses; Resize 256
    # before the random crop on every benchmark but CUB
    params, study = _repository_study(tmp_path, roots=("cub200", "cars196"))
    rows = {r.label: r for r in study.table("iaa/table3").rows}
    cub = {label: rows[label].runs["cub200"][0].config for label in ("Contrastive", "Contrastive + IAA", "Triplet")}
    assert [c["train"]["lr"] for c in cub.values()] == [3e-5, 3e-5, 5e-5]
    cars = rows["Contrastive"].runs["cars196"][0].config
    assert cars["train"]["lr"] == 5e-5 and cars["finetune"]["pre_resize"] == 256
    assert all(c["finetune"]["pre_resize"] is None for c in cub.values())
    # the same method in another table, with a row's own overrides, follows it too
    fixed = {r.label: r for r in study.table("iaa/table12").rows}["Contrastive + IAA (fixed)"].runs["cub200"][0]
    assert fixed.config["train"]["lr"] == 3e-5 and fixed.config["method"]["augmenter"]["iaa"]["sampling"] == "fixed"
    # DVC tracks the method's settings as a param of the paper file
    params["tables"] = ["iaa/table3"]
    stages = build_dvc_yaml(load_study(params))["stages"]
    run = rows["Contrastive"].runs["cub200"][0]
    stage = next(s for s in stages.values() if s["cmd"].endswith(run.id) or run.id in s["cmd"])
    assert {str(REPO / "workflow/papers/iaa.yaml"): ["method_real_settings.contrastive_sim.cub200",
                                                     "real_settings.cub200"]} in stage["params"]


def test_real_settings_for_an_undefined_dataset_or_method_are_refused(tmp_path):
    params = study_params(tmp_path)
    write_paper(params, """
paper: demo
title: Demo
real_settings:
  cub201: {train.lr: 0.1}
method_real_settings:
  triplett: {glyphs: {train.lr: 0.1}}
  triplet: {glyps: {train.lr: 0.1}}
""")
    with pytest.raises(DmlReproError) as err:
        load_study(params)
    for name in ("real_settings: 'cub201' is not a params.yaml dataset", "'triplett' is not a params.yaml method",
                 "method_real_settings.triplet: 'glyps' is not a params.yaml dataset"):
        assert name in str(err.value)


def test_the_resize_before_the_crop_is_torchvisions_resize_of_the_shorter_side(tmp_path):
    from dmlrepro.training.images import resize_shorter

    # hand computation: the shorter side to 256, the longer 256 x long / short truncated
    assert resize_shorter(Image.new("RGB", (300, 200)), 256).size == (384, 256)
    assert resize_shorter(Image.new("RGB", (200, 301)), 256).size == (256, 385)  # 385.28 -> 385
    path = tmp_path / "a.png"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (500, 700, 3), dtype=np.uint8))
    img.save(path)

    class Images:
        paths, labels = [path], np.zeros(1)

    item = (0, (1, 0, 0, 0))
    plain = TrainingViews(Images(), ViewSettings(32, 36, (0.16, 1.0), True))[item]
    resized = TrainingViews(Images(), ViewSettings(32, 36, (0.16, 1.0), True, pre_resize=64))[item]
    from dmlrepro.backbones.extract import augmented_view

    expected = augmented_view(img.resize((89, 64), Image.Resampling.BILINEAR), 32,
                              np.random.default_rng(np.random.SeedSequence([1, 0, 0, 0])), (0.16, 1.0), True)
    assert np.array_equal(resized, np.asarray(expected)) and not np.array_equal(resized, plain)


def test_both_engines_feed_fine_tuned_runs_the_images_and_track_the_real_settings(tmp_path):
    params, study = _repository_study(tmp_path)
    params["tables"] = ["iaa/table3"]
    study = load_study(params)
    stages = build_dvc_yaml(study)["stages"]
    cub = [s for name, s in stages.items() if name.startswith("train-cub200-")]
    assert cub and all(s["deps"][0] == "data/cub200" for s in cub)
    assert not any(name.startswith("extract-cub200") for name in stages)  # no cached features of a fine-tuned run
    params_of = cub[0]["params"]
    assert {str(REPO / "workflow/papers/iaa.yaml"): ["real_settings.cub200"]} in params_of
    assert "finetune.input_size" in params_of and "weights.googlenet" in params_of
    assert "finetune.crop_scale" not in params_of  # the declaration sets it: params.yaml's value does not count
    assert not any(str(k).startswith("extract.") for k in params_of)
    t4 = load_study({**params, "tables": ["iaa/table4"]})
    t4_params = next(s for n, s in build_dvc_yaml(t4)["stages"].items() if n.startswith("train-cub200-"))["params"]
    assert {str(REPO / "workflow/papers/iaa.yaml"): ["real_settings.cub200", "tables.table4.real_settings.cub200"]} \
        in t4_params
    from dmlrepro.study.stages import run_input

    run = study.table("iaa/table3").rows[0].runs["cub200"][0]
    assert run_input(params, run) == "data/cub200"


def test_the_evaluation_view_is_resize_256_then_centre_crop_224():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).filter(
        __import__("PIL.ImageFilter", fromlist=["x"]).GaussianBlur(3))
    got = np.asarray(evaluation_view(img, 256, 224), dtype=float)
    two_step = img.resize((384, 256), Image.Resampling.BILINEAR)  # shorter side 200 -> 256
    left, top = (384 - 224) // 2, (256 - 224) // 2
    expected = np.asarray(two_step.crop((left, top, left + 224, top + 224)), dtype=float)
    assert got.shape == (224, 224, 3)
    assert np.abs(got - expected).mean() < 2.0  # one resampling step instead of two: close, not equal


def test_training_views_are_a_function_of_their_seed_whatever_the_workers(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(path)
        paths.append(path)

    class Images:
        def __init__(self):
            self.paths, self.labels = paths, np.arange(6)

    views = ViewSettings(32, 36, (0.16, 1.0), True)
    items = [(i % 6, (7, 1, 0, i)) for i in range(12)]
    ds = TrainingViews(Images(), views)
    assert np.array_equal(ds[items[0]], ds[items[0]]) and not np.array_equal(ds[items[0]], ds[items[6]])
    in_process = next(iter(loader(ds, batch_sampler=[items], workers=0)))
    in_workers = next(iter(loader(ds, batch_sampler=[items], workers=2)))
    assert in_process.shape == (12, 3, 32, 32) and torch.equal(in_process, in_workers)
    ev = next(iter(loader(EvaluationViews(Images(), views), batch_size=6, items=range(6), workers=0)))
    assert ev.shape == (6, 3, 32, 32)


def test_random_sampling_is_a_shuffled_pass_per_epoch():
    sampler = RandomBatchSampler(n=20, batch_size=5, iterations=4, seed=3)
    first = sampler.batches(1)
    assert sorted(i for b in first for i in b) == list(range(20))  # one pass: every image once
    assert first == sampler.batches(1) and first != sampler.batches(2)
    with pytest.raises(DmlReproError, match="larger than the 3 training images"):
        RandomBatchSampler(n=3, batch_size=5, iterations=1)


def test_settings_that_cannot_run_are_refused_up_front():
    from dmlrepro.training.distributed import Processes
    from dmlrepro.training.finetune import check_settings

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    from dmlrepro.study.settings import run_settings

    cfg = {"train": {**params["train"], "batch_size": 24, "m_per_class": 4}, "finetune": dict(params["finetune"]),
           "evaluation": params["evaluation"]}
    check_settings(run_settings(cfg), Processes())
    with pytest.raises(DmlReproError, match="multiple of 4 processes x train.m_per_class 4"):
        check_settings(run_settings(cfg), Processes(0, 4, 0))
    cfg["finetune"]["resize"] = 200
    with pytest.raises(DmlReproError, match="finetune.resize"):
        check_settings(run_settings(cfg), Processes())
