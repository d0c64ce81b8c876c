"""params.schema.json's enums and per-kind fragments, generated from the registries.

The schema is a checked-in file because Snakemake validates params.yaml with it before any code
of ours runs; `dmlrepro schema` rewrites the generated parts and a test fails when they are stale.
"""
from __future__ import annotations

import copy


def generated_params_schema(current: dict) -> dict:
    from .backbones import BACKBONES
    from .data import DATASETS
    from .methods import LOSSES, MINERS, WRAPPER_KEYS

    schema = copy.deepcopy(current)
    schema["properties"]["backbone"]["properties"]["name"]["enum"] = BACKBONES.names()
    method = schema["$defs"]["method"]["properties"]
    method["loss"]["enum"] = ["none", *LOSSES.names()]
    method["miner"]["enum"] = [None, *MINERS.names()]
    # wrappers around the base loss (IAA, SGAR, DA): each with its own arguments' schema
    for key, registry in WRAPPER_KEYS.items():
        method[key] = {"type": "object", "additionalProperties": False, "properties": {
            name: {"type": "object", "additionalProperties": False, "properties": registry.metadata(name)["schema"]}
            for name in registry.names()}}
    # a method's own training settings (e.g. its tuned lr): any train key, none required
    method["train"] = {"type": "object", "additionalProperties": False,
                       "properties": copy.deepcopy(schema["properties"]["train"]["properties"])}
    # a dataset's own training settings (the schedule its size needs): the same keys, per dataset name
    # (no `threads`: how many a training job gets is the machine's, set once in `train:`)
    per_dataset = copy.deepcopy(method["train"])
    del per_dataset["properties"]["threads"]
    schema["properties"]["train_per_dataset"]["additionalProperties"] = per_dataset
    # a method's own settings on one dataset (a schedule only that method needs there)
    method["train_per_dataset"] = {
        "type": "object", "propertyNames": {"pattern": "^[a-z][a-z0-9_]*$"},
        "description": "this method's own training settings on a dataset (dataset name -> train keys), over "
                       "`train_per_dataset`: a schedule only this method needs there",
        "additionalProperties": copy.deepcopy(per_dataset)}
    dataset = schema["$defs"]["dataset"]
    dataset["properties"]["kind"]["enum"] = DATASETS.names()
    dataset["allOf"] = [
        {"if": {"properties": {"kind": {"const": kind}}},
         "then": {"additionalProperties": False,
                  "properties": {"kind": {"const": kind}, **DATASETS.metadata(kind)["schema"]}}}
        for kind in DATASETS.names()
    ]
    return schema
