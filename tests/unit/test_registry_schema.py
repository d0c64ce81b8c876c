"""params.schema.json's enums and per-kind fragments agree with the registries."""
from __future__ import annotations

import jsonschema
import pytest

from dmlrepro.backbones import BACKBONE_METADATA, BACKBONES
from dmlrepro.config import schema
from dmlrepro.data import DATASETS
from dmlrepro.methods import LOSSES
from dmlrepro.registry import Registry
from dmlrepro.schemas import generated_params_schema


def test_checked_in_schema_matches_the_registries():
    assert generated_params_schema(schema()) == schema(), "run `dmlrepro schema` and commit the file"


def test_a_new_registry_entry_makes_the_schema_stale(monkeypatch):
    monkeypatch.setitem(LOSSES._entries, "zz_new_loss", lambda *a, **k: None)
    generated = generated_params_schema(schema())
    assert "zz_new_loss" in generated["$defs"]["method"]["properties"]["loss"]["enum"]
    assert generated != schema()


def test_every_backbone_declares_its_input_contract():
    for name in BACKBONES.names():
        meta = BACKBONES.metadata(name)
        assert set(BACKBONE_METADATA) <= set(meta)
        assert meta["channel_order"] in ("RGB", "BGR") and len(meta["mean"]) == len(meta["std"]) == 3


def test_every_dataset_kind_declares_its_protocol_and_a_valid_schema_fragment():
    for kind in DATASETS.names():
        meta = DATASETS.metadata(kind)
        assert meta["protocol"] in ("leave_one_out", "query_gallery", "leave_one_out_per_test_list") and "train" in meta["splits"]
        jsonschema.Draft202012Validator.check_schema({"type": "object", "properties": meta["schema"]})


def test_dataset_settings_are_checked_by_their_kinds_fragment():
    from dmlrepro.study.params import validate_params
    from dmlrepro.errors import DmlReproError
    import yaml
    from pathlib import Path

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["datasets"]["glyphs"]["image_sise"] = 64
    with pytest.raises(DmlReproError, match="image_sise"):
        validate_params(params)


def test_registry_refuses_an_entry_without_its_metadata():
    reg = Registry("thing", ("protocol",))
    with pytest.raises(TypeError, match="protocol"):
        reg.register("x")
    reg.register("y", protocol="p")(lambda: None)
    assert reg.metadata("y") == {"protocol": "p"}
