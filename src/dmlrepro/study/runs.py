"""A run is its resolved configuration.

A run's configuration is one JSON-able dict with fixed sections (dataset, data, backbone, regime,
finetune, extract, method, train, evaluation, seed). It is built from params.yaml's defaults, then
a paper's preset, then a row's overrides, then a sweep's value (dotted keys).

`config_hash` hashes only the keys that can change a result (`NON_SEMANTIC` lists the others); it
is recorded with a run's outputs, so a model or metrics file of another configuration is refused.
A run's folder is named by what its declaration sets, not by params.yaml's current values, so
output paths stay static for DVC and rows declared alike train once.

The sections, the layering and what the hash and the folder name count: docs/pipeline.md
("Run identity: what the hash counts").
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePath
from typing import Any, Iterable, Mapping

from ..errors import DmlReproError
from ..paths import checkpoint_file, dataset_dir
from .settings import RunSettings, run_settings

#: Sections of a run configuration that declarations may override with dotted keys.
OVERRIDABLE = ("backbone", "regime", "extract", "finetune", "method", "train", "evaluation")

#: Keys that never change a result: excluded from every hash.
NON_SEMANTIC = {
    # `fonts` (explicit files) counts: it picks the designs; `ks` reaches the run as evaluation.ks
    "data": {"workers", "font_dirs", "root", "ks"},
    "extract": {"batch_size", "threads", "engine"},  # engines agree with torch within 1e-3 (checked)
    "train": {"threads", "allow_unusual_optimizer"},  # the escape hatch of a range check changes no result
    "evaluation": {"threads", "test_every_epoch"},
    # mixed precision, like the device, is how the machine runs it, not what the run is
    "finetune": {"workers", "eval_batch_size", "amp"},
}

#: Naming keys of a layer that stand for named settings in a paper file (a preset, the authors' real
#: settings, one method's real settings, a method's settings tuned on validation): they name a run by
#: that name, not by their values.
SETTINGS_NAMES = ("preset", "real_settings", "method_real_settings", "tuned_settings")

#: Losses that train nothing (the frozen backbone): their runs carry no training settings, so a
#: change of train.lr or the like does not rerun them, and no seed: they are deterministic, so a
#: table shows them once ("single run") instead of repeating one number as if it were n seeds.
TRAINING_FREE_LOSSES = {"none"}
MACHINE_ONLY_TRAIN_KEYS = ("threads",)

#: The sections whose settings decide the cached features (shared by every run that uses them).
FEATURE_SECTIONS = ("dataset", "data", "backbone", "regime", "extract")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(value: Any, n: int = 16) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:n]


def _normal_numbers(value: Any) -> Any:
    """1.0 -> 1, recursively: YAML's `0` and `0.0` are the same setting and must hash alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _normal_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal_numbers(v) for v in value]
    return value


def semantic(cfg: Mapping[str, Any]) -> dict:
    """`cfg` without the keys that cannot change a result (numbers normalised); a weights file
    counts by its name only."""
    out = {}
    for section, value in cfg.items():
        if isinstance(value, Mapping):
            drop = NON_SEMANTIC.get(section, set())
            value = {k: v for k, v in value.items() if k not in drop}
        out[section] = _normal_numbers(value)  # new containers throughout; the leaves are immutable
    backbone = out.get("backbone")
    if isinstance(backbone, dict) and backbone.get("weights"):
        backbone["weights"] = PurePath(str(backbone["weights"])).name
    return out


def config_hash(cfg: Mapping[str, Any]) -> str:
    return short_hash(semantic(cfg))


# ---------------------------------------------------------------------------------------------
# Dotted keys


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars are leaves, empty dicts are kept as leaves."""
    flat = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """Set cfg['a']['b'] = value for key 'a.b', creating dicts on the way."""
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            if child is not None:
                raise DmlReproError(f"cannot set {key!r}: {part!r} holds {child!r}, not a mapping")
            child = node[part] = {}
        node = child
    node[leaf] = copy.deepcopy(value)


def apply_overrides(cfg: dict, overrides: Mapping[str, Any], where: str) -> None:
    """Apply dotted-key (or nested) overrides to a run configuration in place."""
    for key, value in flatten(overrides).items():
        root = key.split(".")[0]
        if root not in OVERRIDABLE:
            raise DmlReproError(f"{where}: {key!r} is not a run key; it must start with one of: "
                                f"{', '.join(OVERRIDABLE)}")
        if key == root and root != "regime":
            raise DmlReproError(f"{where}: {key!r} is a section, not a value; set one of its keys, "
                                f"e.g. {root}.{'name' if root == 'backbone' else 'lr' if root == 'train' else '...'}")
        if root == "regime":
            cfg["regime"] = value
        else:
            set_dotted(cfg, key, value)


# ---------------------------------------------------------------------------------------------
# Resolution


def default_config(params: Mapping[str, Any], dataset: str, method: str) -> dict:
    """The configuration params.yaml gives a (dataset, method) pair before any declaration."""
    if dataset not in params["datasets"]:
        raise DmlReproError(f"dataset {dataset!r} is not defined in params.yaml "
                            f"(defined under datasets: {', '.join(params['datasets'])})")
    if method not in params["methods"]:
        raise DmlReproError(f"method {method!r} is not defined in params.yaml "
                            f"(defined under methods: {', '.join(params['methods'])})")
    method_cfg = _with_wrapper_defaults(criterion_config(params["methods"][method]), method)
    method_train = params["methods"][method].get("train", {})  # a method's own training settings (its tuned lr)
    return copy.deepcopy({
        "dataset": dataset,
        "data": params["datasets"][dataset],
        "backbone": params["backbone"],
        "regime": params.get("regime", "frozen"),
        "extract": params["extract"],
        "finetune": params.get("finetune", {}),
        "method": {"name": method, **method_cfg},
        # then the dataset's own (the schedule its size needs to converge): over the method's, whose lr stays
        "train": {**params["train"], **method_train, **dataset_train(params, dataset, method)},
        "evaluation": {"ks": dataset_ks(params, dataset)},
    })


def dataset_train(params: Mapping[str, Any], dataset: str, method: str | None = None) -> dict:
    """A dataset's own training settings (params.yaml's `train_per_dataset`), then, given a method,
    that method's own on the dataset (`methods.<m>.train_per_dataset`: a schedule only one method
    needs there); {} when there are none."""
    own = dict((params.get("train_per_dataset") or {}).get(dataset) or {})
    if method is not None:
        own.update(method_dataset_train(params, method, dataset))
    return own


def criterion_config(method_entry: Mapping[str, Any]) -> dict:
    """A params.yaml method entry without its training blocks (`train`, `train_per_dataset`): the
    loss, miner and wrappers that build_criterion takes."""
    return {k: v for k, v in method_entry.items() if k not in ("train", "train_per_dataset")}


def method_dataset_train(params: Mapping[str, Any], method: str, dataset: str) -> dict:
    """A method's own training settings on one dataset (`methods.<m>.train_per_dataset.<d>`)."""
    return dict((params["methods"][method].get("train_per_dataset") or {}).get(dataset) or {})


def _with_wrapper_defaults(method_cfg: dict, method: str) -> dict:
    """The method with every argument of its augmenters / regularisers (IAA, SGAR, DA) filled in
    from their schemas: writing a default out in params.yaml (so that `dvc exp run -S` reaches it)
    names the same run as leaving it out."""
    from ..methods import WRAPPER_KEYS, wrapper_args

    for key, registry in WRAPPER_KEYS.items():
        if isinstance(method_cfg.get(key), Mapping):
            method_cfg[key] = wrapper_args(f"methods.{method}.{key}", method_cfg[key], registry)
    return method_cfg


def ks_source(params: Mapping[str, Any], dataset: str) -> str:
    """Where a dataset's Recall@K list comes from: its own `ks`, its kind's (the papers' Recall@K
    for that benchmark, e.g. SOP's 1, 10, 100, 1000), else `evaluation.ks`."""
    from ..data import DATASETS

    entry = params["datasets"][dataset]
    if entry.get("ks"):
        return f"datasets.{dataset}.ks"
    kind = entry.get("kind")
    if kind in DATASETS and DATASETS.metadata(kind).get("ks"):
        return f"kind:{kind}"
    return "evaluation.ks"


def dataset_ks(params: Mapping[str, Any], dataset: str) -> list[int]:
    source = ks_source(params, dataset)
    if source.startswith("kind:"):
        from ..data import DATASETS

        return list(DATASETS.metadata(source[5:])["ks"])
    node = params
    for part in source.split("."):
        node = node[part]
    return list(node)


@dataclass(frozen=True)
class FeatureSet:
    """Cached backbone features of one prepared dataset, keyed by (dataset, backbone, extraction)."""

    dataset: str
    config: dict  # the FEATURE_SECTIONS of a run configuration
    name: str  # <backbone> or <backbone>-<hash8>

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.name}"

    def path(self, params: Mapping[str, Any]) -> Path:
        return Path(params["paths"]["features"]) / self.dataset / f"{self.name}.npz"

    @cached_property
    def hash(self) -> str:  # a feature set's configuration is never changed after it is resolved
        return config_hash(self.config)


@dataclass(frozen=True)
class Run:
    """One trained model: a resolved configuration and a seed."""

    config: dict  # every section, seed included
    name: str  # <method> or <method>-<hash8>
    features: FeatureSet
    declared: frozenset = frozenset()  # the dotted keys its declaration sets (params.yaml's do not apply)

    @property
    def dataset(self) -> str:
        return self.config["dataset"]

    @property
    def backbone(self) -> str:
        return self.config["backbone"]["name"]

    @property
    def method(self) -> str:
        return self.config["method"]["name"]

    @property
    def finetuned(self) -> bool:
        """Trained end to end from the images (regime finetune), not on cached features."""
        return self.config["regime"] == "finetune"

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.backbone}/{self.name}/seed{self.seed}"

    @cached_property
    def hash(self) -> str:  # a run's configuration is never changed after it is resolved
        return config_hash(self.config)

    def dir(self, params: Mapping[str, Any]) -> Path:
        return Path(params["paths"]["runs"]) / self.id

    @cached_property
    def settings(self) -> RunSettings:
        """The typed settings training and evaluation read (defaults filled from the schema)."""
        return run_settings(self.config, trains=self.config["method"].get("loss") not in TRAINING_FREE_LOSSES)


@dataclass(frozen=True)
class RunPaths:
    """Where a run's jobs read and write, resolved once from params.yaml's `paths:`: its folder
    (model.pt, history.json, metrics.json), its cached features (frozen regime) or its prepared
    images (fine-tuning), and the folder of its resume state."""

    out_dir: Path
    features: Path
    images: Path
    checkpoints: Path

    @classmethod
    def of(cls, params: Mapping[str, Any], run: Run, out_dir: Path | None = None) -> "RunPaths":
        return cls(Path(out_dir) if out_dir is not None else run.dir(params), run.features.path(params),
                   dataset_dir(params, run.dataset), Path(params["paths"]["checkpoints"]))

    def checkpoint(self, config_hash: str, test_every_epoch: bool) -> Path:
        return checkpoint_file(self.checkpoints, config_hash, test_every_epoch)


#: (where, overrides[, naming]): `naming` is what the folder name hashes (default: the overrides)
Layer = tuple


def _naming_keys(layers: Iterable[Layer], sections: tuple[str, ...]) -> dict:
    """What names a run (or its features): the declared keys of its layers that can change a result
    and belong to `sections`; a preset counts by its name, so editing its values keeps the name."""
    named: dict = {}
    for _, overrides, naming in layers:
        touched = {k.split(".")[0] for k in flatten(overrides)}
        for key, value in flatten(naming).items():
            if key in SETTINGS_NAMES:
                if touched & set(sections):
                    named[key] = value
                continue
            section, _, leaf = key.partition(".")
            if section not in sections or leaf.split(".")[0] in NON_SEMANTIC.get(section, ()) \
                    or key in ("backbone.name", "method.name"):  # the path holds these already
                continue
            named[key] = PurePath(str(value)).name if key == "backbone.weights" and value else value
    return _normal_numbers(named)


def resolve_run(params: Mapping[str, Any], dataset: str, method: str, seed: int,
                layers: Iterable[Layer] = ()) -> Run:
    """Resolve a run: params.yaml defaults, then each (where, overrides, naming) layer in order.

    The folder name comes from the declaration, not from the values: <method> for a plain row,
    else <method>-<hash8 of the declared keys> (a preset by its name). So `dvc exp run -S` on any
    params.yaml or preset value keeps every path (DVC needs static outputs), and rows declared alike
    in several tables share one run.
    """
    layers = [(layer[0], layer[1], layer[2] if len(layer) > 2 else layer[1]) for layer in layers]
    cfg = default_config(params, dataset, method)
    for where, overrides, _ in layers:
        apply_overrides(cfg, overrides, where)
    cfg["method"]["name"] = method  # the name is the row's, never an override's
    if not cfg["backbone"].get("weights"):  # the user's local file for this backbone, if params.yaml names one
        cfg["backbone"]["weights"] = (params.get("weights") or {}).get(cfg["backbone"]["name"])
    # each regime's settings count only for it: extraction settings never rename a fine-tuned run
    cfg.pop("extract" if cfg["regime"] == "finetune" else "finetune", None)
    cfg["seed"] = int(seed)
    if cfg["method"].get("loss") in TRAINING_FREE_LOSSES:
        cfg["seed"] = 0
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k in MACHINE_ONLY_TRAIN_KEYS}

    feature_named = _naming_keys(layers, ("backbone", "regime", "extract"))
    backbone = cfg["backbone"]["name"]
    features = FeatureSet(dataset, copy.deepcopy({s: cfg.get(s) for s in FEATURE_SECTIONS}),
                          backbone + (f"-{short_hash(feature_named, 8)}" if feature_named else ""))
    run_named = _naming_keys(layers, OVERRIDABLE)
    if cfg["method"].get("loss") in TRAINING_FREE_LOSSES:  # training settings do not apply
        run_named = {k: v for k, v in run_named.items() if not k.startswith("train.")}
    name = method + (f"-{short_hash(run_named, 8)}" if run_named else "")
    declared = frozenset(k for _, overrides, _ in layers for k in flatten(overrides))
    return Run(cfg, name, features, declared)
