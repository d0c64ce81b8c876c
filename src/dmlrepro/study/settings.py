"""A run's resolved settings as typed objects: what training and evaluation read.

Built once, from the run's resolved configuration, when the run is resolved; every key a section
may leave out takes the schema's `default` (workflow/schemas/params.schema.json), the one place
defaults are written. The configuration dict stays what the hash and model.pt record.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

from ..config import schema
from ..errors import DmlReproError


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    iterations_per_epoch: Optional[int]
    batch_size: int
    m_per_class: int
    embedding_dim: int
    lr: float
    sampling: str
    sample_with_replacement: bool
    optimizer: str
    weight_decay: float
    lr_milestones: list
    lr_gamma: float
    selection_metric: str
    threads: int


@dataclass(frozen=True)
class FinetuneSettings:
    input_size: int
    resize: int
    pre_resize: Optional[int]
    crop_scale: list
    flip: bool
    frozen_bn: bool
    backbone_lr_multiplier: float
    warmup_epochs: int
    grad_clip: Optional[float]
    amp: bool
    workers: int
    eval_batch_size: int


@dataclass(frozen=True)
class EvaluationSettings:
    ks: list
    threads: int
    test_every_epoch: bool


@dataclass(frozen=True)
class RunSettings:
    """The settings sections a run has: `finetune` for end-to-end runs, `train` unless its loss
    trains nothing; `threads`: the training job's (train.threads). Extraction settings are the
    backbone layer's (:mod:`dmlrepro.backbones.extract`, its own defaults: features are shared by runs)."""
    evaluation: EvaluationSettings
    threads: int
    train: Optional[TrainSettings] = None
    finetune: Optional[FinetuneSettings] = None


def section_settings(cls, section: str, values: Mapping[str, Any]):
    """`cls` from a configuration section, its missing keys from the schema's defaults."""
    props = schema()["properties"][section]["properties"]
    kwargs = {}
    for f in fields(cls):
        if f.name in values:
            kwargs[f.name] = values[f.name]
        elif "default" in props.get(f.name, {}):
            kwargs[f.name] = props[f.name]["default"]
        else:
            raise DmlReproError(f"{section}.{f.name} is not set and the schema gives it no default; "
                                f"set it in params.yaml's {section}:")
    return cls(**kwargs)


def run_settings(config: Mapping[str, Any], trains: bool = True) -> RunSettings:
    """The typed settings of a resolved run configuration (`trains`: False for a loss that trains
    nothing, whose `train` section holds only machine settings)."""
    build = {"train": TrainSettings, "finetune": FinetuneSettings}
    sections = {name: section_settings(cls, name, config[name]) for name, cls in build.items()
                if isinstance(config.get(name), Mapping) and (trains or name != "train")}
    threads = config.get("train", {}).get("threads", schema()["properties"]["train"]["properties"]["threads"]["default"])
    return RunSettings(evaluation=section_settings(EvaluationSettings, "evaluation", config["evaluation"]),
                       threads=threads, **sections)
