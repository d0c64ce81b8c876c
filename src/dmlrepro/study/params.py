"""Load and validate params.yaml: the schema (:mod:`dmlrepro.config`), then the cross-references it
cannot express (batch size a multiple of m_per_class, every configured loss and miner buildable,
m_per_class within the smallest prepared class), for params.yaml and for every run a declaration
resolves (section_problems).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml

from ..config import DEFAULT_PARAMS, describe, schema, schema_problems
from ..errors import DmlReproError
from ..paths import dataset_dir
from .runs import criterion_config, dataset_train, method_dataset_train
from .settings import TrainSettings, section_settings


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict:
    """Read, validate and return params.yaml; raise DmlReproError naming the fault."""
    path = Path(path)
    if not path.is_file():
        raise DmlReproError(f"params file {path} not found; run from the repository root or pass --params FILE")
    try:
        params = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise DmlReproError(f"{path} is not valid YAML: {exc}") from None
    validate_params(params, source=str(path))
    return params


def validate_params(params: Any, source: str = DEFAULT_PARAMS) -> None:
    problems = schema_problems(params)
    if not problems:
        problems = _cross_reference_problems(params)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DmlReproError(f"invalid configuration in {source}:\n{lines}")


def _cross_reference_problems(params: dict) -> list[str]:
    problems = [f"train.{p}" for p in _train_problems(train_settings(params["train"]))]
    problems += _selection_problems(train_settings(params["train"]), params["evaluation"])
    problems += _method_build_problems(params)
    problems += _class_size_problems(params)
    problems += _train_per_dataset_problems(params)
    return problems


def _train_per_dataset_problems(params: dict) -> list[str]:
    """A dataset's own training settings, and a method's own on a dataset, name a defined dataset
    and, over `train:` and over each method's own block, still make a valid schedule (e.g. its
    lr_milestones below its epochs); each problem is named at the block that brings it."""
    problems = []
    datasets = ", ".join(params["datasets"])
    for name, overrides in (params.get("train_per_dataset") or {}).items():
        where = f"train_per_dataset.{name}"
        if name not in params["datasets"]:
            problems.append(f"{where}: {name!r} is not a params.yaml dataset (datasets: {datasets})")
            continue
        plain = _train_problems(train_settings({**params["train"], **overrides}))
        problems += [f"{where} (over train:): {p}" for p in plain]
        for method, entry in params["methods"].items():  # a method's own block may set what the dataset's does not
            if entry.get("train") and entry.get("loss") != "none":
                merged = train_settings({**params["train"], **entry["train"], **overrides})
                problems += [f"{where} (over methods.{method}.train): {p}" for p in _train_problems(merged)
                             if p not in plain]
    for method, entry in params["methods"].items():
        for name in entry.get("train_per_dataset") or {}:
            where = f"methods.{method}.train_per_dataset.{name}"
            if entry.get("loss") == "none":
                problems.append(f"{where}: method {method!r} trains nothing (loss: none); remove its train_per_dataset")
            elif name not in params["datasets"]:
                problems.append(f"{where}: {name!r} is not a params.yaml dataset (datasets: {datasets})")
            else:  # only what the method's block brings: the dataset's own problems are named above
                below = _train_problems(train_settings({**params["train"], **entry.get("train", {}),
                                                        **dataset_train(params, name)}))
                merged = train_settings({**params["train"], **entry.get("train", {}), **dataset_train(params, name, method)})
                problems += [f"{where}: {p}" for p in _train_problems(merged) if p not in below]
    return problems


def _selection_problems(train: TrainSettings, evaluation: dict) -> list[str]:
    metric, ks = train.selection_metric, evaluation["ks"]
    k = metric.partition("@")[2]
    if metric.startswith("recall@") and int(k) not in ks:
        return [f"train.selection_metric: {metric} cannot be computed: evaluation.ks {ks} has no {k}; "
                f"add {k} to evaluation.ks or choose recall@{ks[0]}, map@r or r_precision"]
    return []


def _method_build_problems(params: dict) -> list[str]:
    """Build every configured criterion and miner now, so an unknown argument fails here and not
    minutes into a training job."""
    from ..methods import build_criterion

    problems = []
    for name, method in params["methods"].items():
        if method.get("loss") == "none":
            continue
        method = criterion_config(method)
        try:
            build_criterion(method, num_classes=2, embedding_dim=params["train"]["embedding_dim"], name=name)
        except DmlReproError as exc:
            problems.append(str(exc))
    return problems


def _class_size_problems(params: dict) -> list[str]:
    """m_per_class above the smallest training class of a prepared dataset (checked when its manifest
    exists; the sampler refuses it at train time otherwise), for each method that trains, with its
    own blocks (`train:`, and on the dataset), named at the block that sets it."""
    problems = []
    for name in params["datasets"]:
        on_dataset = dataset_train(params, name)
        counts = None
        for method, entry in params["methods"].items():  # each method that trains, with its own blocks
            if entry.get("loss") == "none":
                continue
            own, own_on_dataset = entry.get("train") or {}, method_dataset_train(params, method, name)
            train = train_settings({**params["train"], **own, **on_dataset, **own_on_dataset})
            if train.sample_with_replacement:
                continue
            counts = _train_class_sizes(dataset_dir(params, name) / "manifest.csv") if counts is None else counts
            if counts and min(counts.values()) < train.m_per_class:
                smallest = min(counts, key=counts.get)
                blocks = [(f"methods.{method}.train_per_dataset.{name}", own_on_dataset),
                          (f"train_per_dataset.{name}", on_dataset), (f"methods.{method}.train", own)]
                where = next((w for w, block in blocks if "m_per_class" in block), "train")  # the block that sets it
                problems.append(
                    f"{where}.m_per_class: {train.m_per_class} is larger than the smallest training class of dataset "
                    f"{name!r} (class {smallest!r} has {counts[smallest]} images); lower it to at most "
                    f"{counts[smallest]} or set {where}.sample_with_replacement: true")
    return list(dict.fromkeys(problems))


def _train_class_sizes(manifest: Path) -> dict[str, int]:
    import csv

    if not manifest.is_file():
        return {}
    counts: dict[str, int] = {}
    with open(manifest, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("split") == "train":
                counts[row["class_name"]] = counts.get(row["class_name"], 0) + 1
    return counts


def train_settings(train: dict) -> TrainSettings:
    return section_settings(TrainSettings, "train", train)


def _train_problems(train: TrainSettings) -> list[str]:
    problems = []
    if train.sampling == "m_per_class" and train.batch_size % train.m_per_class:
        problems.append(f"batch_size: {train.batch_size} is not a multiple of m_per_class ({train.m_per_class})")
    for e in train.lr_milestones:
        if e >= train.epochs:
            problems.append(f"lr_milestones: epoch {e} is not below epochs ({train.epochs})")
    return problems


def _schema_problems(section: str, value: Any) -> tuple[str, ...]:
    """One section of a run's configuration against its part of the schema."""
    import jsonschema

    full = schema()
    fragment = {"$ref": "#/$defs/method"} if section == "method" else full["properties"][section]
    sub = {**fragment, "$defs": full["$defs"]}
    return tuple(f"{section}.{describe(e)}" if e.absolute_path else f"{section}: {describe(e)}"
                 for e in jsonschema.Draft202012Validator(sub).iter_errors(value))


@functools.lru_cache(maxsize=None)
def _memoised_schema_problems(section: str, value_json: str) -> tuple[str, ...]:
    # a study's hundreds of runs share a few distinct sections, and jsonschema is slow
    return _schema_problems(section, json.loads(value_json))


def _section_schema_problems(section: str, value: Any) -> tuple[str, ...]:
    """Memoised on the value's JSON text where that text stands for the value exactly (a YAML date,
    a tuple from code: checked as they are, so the problem names them)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return _schema_problems(section, value)
    return _memoised_schema_problems(section, text) if json.loads(text) == value else _schema_problems(section, value)


def section_problems(run_cfg: dict) -> list[str]:
    """Check a resolved run configuration (after presets and overrides) against the same schema."""
    from .runs import TRAINING_FREE_LOSSES

    problems = []
    training_free = run_cfg["method"].get("loss") in TRAINING_FREE_LOSSES
    for section in ("backbone", "regime", "extract", "finetune", "train", "evaluation", "method"):
        if section not in run_cfg:  # each regime has its own settings section (extract or finetune)
            continue
        value = run_cfg[section]
        if section == "train" and training_free:
            continue
        if section == "method":
            value = {k: v for k, v in value.items() if k != "name"}
        problems += _section_schema_problems(section, value)
    if not problems and not training_free:
        problems += [f"train.{p}" for p in _train_problems(train_settings(run_cfg["train"]))]
        from ..methods import method_problems

        problems += [f"method: {p}" for p in method_problems(run_cfg["method"])]
    return problems


