import copy

import pytest

from dmlrepro.config import check_defined
from dmlrepro.paths import figure_paths, table_paths
from dmlrepro.study.params import load_params, section_problems, validate_params
from dmlrepro.errors import DmlReproError
from dmlrepro.study.runs import resolve_run
from conftest import REPO


@pytest.fixture
def params():
    return load_params(REPO / "params.yaml")


def _error(params) -> str:
    with pytest.raises(DmlReproError) as info:
        validate_params(params)
    return str(info.value)


def test_repository_params_are_valid(params):
    assert params["backbone"]["name"] == "efficientnet_lite0"
    assert params["seeds"] and params["regime"] == "frozen"


def test_typo_names_the_key_and_the_allowed_ones(params):
    params["train"]["lrr"] = 0.1
    msg = _error(params)
    assert "unknown key train.lrr" in msg and "lr," in msg


def test_negative_learning_rate_names_value_and_bound(params):
    params["train"]["lr"] = -0.001
    assert "train.lr: -0.001 is out of range; it must be > 0" in _error(params)


def test_unknown_method_loss_lists_allowed(params):
    params["methods"]["mine"] = {"loss": "arcface2"}
    msg = _error(params)
    assert 'methods.mine.loss: "arcface2" is not allowed' in msg and '"triplet"' in msg


def test_removed_experiment_section_is_an_unknown_key(params):
    params["experiment"] = {"methods": ["triplet"], "datasets": ["glyphs"], "seeds": [0]}
    msg = _error(params)
    assert "unknown key experiment" in msg and "seeds" in msg and "tables" in msg


def test_top_level_seeds_figures_regime_are_checked(params):
    bad = copy.deepcopy(params)
    del bad["seeds"]
    assert "'seeds' is a required property" in _error(bad)
    bad = copy.deepcopy(params)
    bad["seeds"] = [0, 0]
    assert "seeds" in _error(bad)
    bad = copy.deepcopy(params)
    bad["figures"] = ["no_slash"]
    assert "figures.0" in _error(bad)
    bad = copy.deepcopy(params)
    bad["regime"] = "fine-tune"
    assert 'regime: "fine-tune" is not allowed; choose one of: "frozen", "finetune"' in _error(bad)


def test_batch_must_divide_into_classes(params):
    params["train"]["batch_size"] = 130
    assert "train.batch_size: 130 is not a multiple of m_per_class (4)" in _error(params)


def test_lr_milestones_must_be_below_epochs(params):
    params["train"]["lr_milestones"] = [params["train"]["epochs"]]
    assert "train.lr_milestones: epoch" in _error(params)


def test_unknown_dataset_key_is_rejected(params):
    params["datasets"]["glyphs"]["imagesize"] = 64
    assert "unknown key datasets.glyphs.imagesize" in _error(params)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(DmlReproError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(DmlReproError, match="not valid YAML"):
        load_params(bad)


def test_config_hash_changes_with_settings_but_not_with_threads(params):
    base = resolve_run(params, "glyphs", "triplet", 0).hash
    assert base == resolve_run(params, "glyphs", "triplet", 0).hash
    assert base != resolve_run(params, "glyphs", "triplet", 1).hash
    other = copy.deepcopy(params)
    other["train"]["lr"] = 3e-4
    assert base != resolve_run(other, "glyphs", "triplet", 0).hash
    other = copy.deepcopy(params)
    other["train"]["threads"] = 8
    assert base == resolve_run(other, "glyphs", "triplet", 0).hash


def test_run_of_an_undefined_method_or_dataset_names_what_is_defined(params):
    with pytest.raises(DmlReproError, match=r"method 'nope' is not defined .*triplet"):
        resolve_run(params, "glyphs", "nope", 0)
    with pytest.raises(DmlReproError, match=r"dataset 'cub' is not defined .*glyphs"):
        resolve_run(params, "cub", "triplet", 0)
    with pytest.raises(DmlReproError, match=r"method 'nope' is not defined .*triplet"):
        check_defined(params, "methods", "nope")


def test_section_problems_of_a_resolved_run(params):
    assert section_problems(resolve_run(params, "glyphs", "triplet", 0).config) == []
    run = resolve_run(params, "glyphs", "triplet", 0, [("test", {"train.batch_size": 130})])
    assert section_problems(run.config) == ["train.batch_size: 130 is not a multiple of m_per_class (4)"]
    run = resolve_run(params, "glyphs", "triplet", 0, [("test", {"train.lr": -1})])
    assert any("train.lr: -1 is out of range" in p for p in section_problems(run.config))
    run = resolve_run(params, "glyphs", "triplet", 0, [("test", {"method.loss_args.marign": 0.1})])
    (problem,) = section_problems(run.config)
    assert problem.startswith("method: ") and "marign" in problem and "margin" in problem


def test_section_problems_name_a_value_json_cannot_stand_for(params):
    """The schema check is memoised on a section's JSON text; a YAML date (not JSON) and a tuple
    (JSON writes it as a list) are checked as they are, so the problem still names them, also after
    the same section was checked as JSON."""
    import datetime

    good = resolve_run(params, "glyphs", "triplet", 0).config
    assert section_problems(good) == []
    dated = {**good, "train": {**good["train"], "lr": datetime.date(2024, 1, 1)}}
    assert "train.lr: datetime.date(2024, 1, 1) is not of type 'number'" in section_problems(dated)
    tupled = {**good, "train": {**good["train"], "lr_milestones": tuple(good["train"]["lr_milestones"])}}
    assert any(p.startswith("train.lr_milestones: (") and "is not of type 'array'" in p for p in section_problems(tupled))


def test_artefact_paths(params):
    md, csv, html = table_paths(params, "p", "t")
    assert (str(md), str(csv), str(html)) == ("results/tables/p/t.md", "results/tables/p/t.csv", "results/tables/p/t.html")
    png, csv = figure_paths(params, "p", "s")
    assert (str(png), str(csv)) == ("results/figures/p/s.png", "results/figures/p/s.csv")


def test_a_typo_in_loss_args_of_any_method_fails_validation(params):
    params["methods"]["unused"] = {"loss": "triplet", "loss_args": {"marign": 0.1}}  # in no table
    msg = _error(params)
    assert "'marign'" in msg and "methods.unused.loss_args" in msg and "margin" in msg


def test_a_typo_in_miner_args_fails_validation(params):
    params["methods"]["triplet"]["miner_args"] = {"type_of_triplets": "semi-hard"}
    assert "methods.triplet.miner_args.type_of_triplets = 'semi-hard' is not one of" in _error(params)


def test_selection_metric_must_be_computable_from_ks(params):
    params["train"]["selection_metric"] = "recall@16"
    msg = _error(params)
    assert "recall@16" in msg and "evaluation.ks [1, 2, 4, 8] has no 16" in msg
    params["train"]["selection_metric"] = "recall@8"
    validate_params(params)


def test_m_per_class_above_the_smallest_prepared_class(params, tmp_path):
    params["paths"]["data"] = str(tmp_path)
    (tmp_path / "glyphs").mkdir()
    rows = ["path,label,class_name,split"] + [f"a{i}.png,0,A,train" for i in range(5)] + \
        [f"b{i}.png,1,B,train" for i in range(3)] + ["c.png,2,C,test"]
    (tmp_path / "glyphs" / "manifest.csv").write_text("\n".join(rows) + "\n")
    msg = _error(params)  # m_per_class 4, class B has 3 training images
    assert "train.m_per_class: 4 is larger than the smallest training class of dataset 'glyphs'" in msg
    assert "class 'B' has 3 images" in msg and "sample_with_replacement" in msg
    params["train"]["sample_with_replacement"] = True
    validate_params(params)
    params["train_per_dataset"] = {"glyphs": {"sample_with_replacement": False}}  # the dataset's own wins...
    assert "train.m_per_class: 4 is larger" in _error(params)
    params["train"]["sample_with_replacement"] = False
    params["train_per_dataset"] = {"glyphs": {"m_per_class": 2, "batch_size": 16}}  # ...also when it fixes it
    validate_params(params)
    params["train_per_dataset"] = {"glyphs": {"m_per_class": 8, "batch_size": 16}}  # and the message names it
    assert "train_per_dataset.glyphs.m_per_class: 8 is larger than the smallest training class" in _error(params)
    params["train_per_dataset"] = {"glyphs": {"m_per_class": 2, "batch_size": 16}}
    params["methods"]["triplet"]["train_per_dataset"] = {"glyphs": {"m_per_class": 6, "batch_size": 18}}
    msg = _error(params)  # a method's own block on the dataset is checked too, and named
    assert "methods.triplet.train_per_dataset.glyphs.m_per_class: 6 is larger than the smallest" in msg
    assert msg.count("is larger than the smallest") == 1  # the dataset's 2 fits class B's 3
    del params["methods"]["triplet"]["train_per_dataset"]
    params["train_per_dataset"] = {"glyphs": {"m_per_class": 8, "batch_size": 16}}
    params["methods"]["triplet"]["train"] = {"sample_with_replacement": True}  # the method's own sampling...
    msg = _error(params)
    assert "train_per_dataset.glyphs.m_per_class: 8" in msg  # ...spares its runs, not the others'
    params["methods"] = {"frozen": params["methods"]["frozen"], "triplet": params["methods"]["triplet"]}
    validate_params(params)  # triplet samples with replacement, frozen trains nothing: nothing to refuse
    params["train_per_dataset"] = {}
    params["methods"]["triplet"]["train"] = {"m_per_class": 5, "batch_size": 20}  # a method's own block too
    assert "methods.triplet.train.m_per_class: 5 is larger than the smallest training class" in _error(params)
