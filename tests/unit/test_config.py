import copy

import pytest
import yaml

from dmlrepro.config import config_hash, load_params, run_config, validate_params
from dmlrepro.errors import DmlReproError
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


def test_experiment_must_reference_defined_methods_and_datasets(params):
    params["experiment"]["methods"].append("nonexistent")
    params["experiment"]["datasets"].append("cub")
    msg = _error(params)
    assert "'nonexistent' is not defined under methods" in msg and "'cub' is not defined under datasets" in msg


def test_batch_must_divide_into_classes(params):
    params["train"]["batch_size"] = 130
    assert "not a multiple of train.m_per_class" in _error(params)


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
    base = config_hash(run_config(params, "glyphs", "triplet", 0))
    assert base == config_hash(run_config(params, "glyphs", "triplet", 0))
    assert base != config_hash(run_config(params, "glyphs", "triplet", 1))
    other = copy.deepcopy(params)
    other["train"]["lr"] = 3e-4
    assert base != config_hash(run_config(other, "glyphs", "triplet", 0))
    other = copy.deepcopy(params)
    other["train"]["threads"] = 8
    assert base == config_hash(run_config(other, "glyphs", "triplet", 0))


def test_run_of_an_undefined_method_or_dataset_names_what_is_defined(params):
    with pytest.raises(DmlReproError, match=r"method 'nope' is not defined .*triplet"):
        run_config(params, "glyphs", "nope", 0)
    with pytest.raises(DmlReproError, match=r"dataset 'cub' is not defined .*glyphs"):
        run_config(params, "cub", "triplet", 0)
