"""Paper declarations (workflow/papers/<paper>.yaml) expanded into the runs they need.

A declaration names its presets (training settings), its tables (rows = a method plus a preset and
overrides of any run key; columns = dataset x metric x evaluation set; the published number per
cell) and its sweeps (one run key over a list of values on some datasets -> a figure). Every
declaration under `paths.papers` is part of the study; params.yaml `tables:` / `figures:` pick
what the pipeline builds by default. A run needed by several tables or sweeps is resolved once.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import DmlReproError
from .claims import Claim, expand_claims
from .runs import Run, default_config, resolve_run

PROTOCOLS = {
    "honest": "epoch selected on the class-disjoint validation split",
    "paper": "best test epoch, as the authors' code reports",
    "last_epoch": "last epoch",
}


@lru_cache(maxsize=1)
def paper_schema() -> dict:
    text = resources.files("dmlrepro").joinpath("schema/paper.schema.json").read_text("utf-8")
    return json.loads(text)


@dataclass
class Needs:
    """What a run must record beyond the honest protocol's metrics (from every table that uses it)."""

    nmi: bool = False  # NMI (k-means: the slow part of evaluation)
    test_every_epoch: bool = False  # test metrics each epoch (the papers' protocol)
    last_epoch: bool = False  # test metrics of the last epoch's weights (one more full search)

    def train_flags(self) -> str:
        return "--test-every-epoch" if self.test_every_epoch else ""

    def evaluate_flags(self) -> str:
        return " ".join(f for f, on in (("--nmi", self.nmi), ("--paper-protocol", self.test_every_epoch),
                                        ("--last-epoch", self.last_epoch)) if on)


@dataclass
class Row:
    label: str
    method: str
    preset: str | None
    runs: dict[str, list[Run]]  # dataset -> one run per seed
    published: dict[str, float | None]


@dataclass
class _Target:
    """What a table and a figure have in common: where they are declared and their seeds."""

    paper: str
    name: str
    decl: dict
    seeds: list[int]

    @property
    def ref(self) -> str:
        return f"{self.paper}/{self.name}"

    @property
    def caption(self) -> str:
        return " ".join(self.decl.get("caption", self.ref).split())


@dataclass
class Table(_Target):
    rows: list[Row]
    claims: list[Claim] = field(default_factory=list)  # published improvements between its rows

    @property
    def protocols(self) -> list[str]:
        return self.decl.get("protocols", ["honest"])

    def runs(self) -> list[Run]:
        return _unique(r for row in self.rows for runs in row.runs.values() for r in runs)


@dataclass
class SweepPoint:
    dataset: str
    value: Any
    runs: list[Run]


@dataclass
class Sweep(_Target):
    points: list[SweepPoint]

    def runs(self) -> list[Run]:
        return _unique(r for p in self.points for r in p.runs)


@dataclass
class Study:
    params: dict
    papers: dict[str, dict] = field(default_factory=dict)  # paper -> declaration
    paper_files: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    sweeps: dict[str, Sweep] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)  # run id -> run
    needs: dict[str, Needs] = field(default_factory=dict)  # run id -> needs
    presets_of: dict[str, set] = field(default_factory=dict)  # run id -> {(paper, key of its named settings)}

    # -- lookups with messages that say what exists --------------------------------------------
    def table(self, ref: str) -> Table:
        if ref not in self.tables:
            raise DmlReproError(f"no table {ref!r} is declared; declared tables: {', '.join(sorted(self.tables)) or '(none)'}")
        return self.tables[ref]

    def sweep(self, ref: str) -> Sweep:
        if ref not in self.sweeps:
            raise DmlReproError(f"no sweep/figure {ref!r} is declared; declared: {', '.join(sorted(self.sweeps)) or '(none)'}")
        return self.sweeps[ref]

    def run(self, run_id: str) -> Run:
        if run_id not in self.runs:
            raise DmlReproError(
                f"run {run_id!r} is not needed by any declared table or sweep (or its configuration changed "
                f"its name); `dmlrepro list runs` shows the declared runs. If dvc.yaml names it, regenerate "
                f"dvc.yaml with `dmlrepro dvc-yaml`")
        return self.runs[run_id]

    def selected(self) -> tuple[list[Table], list[Sweep]]:
        """The tables and figures params.yaml asks the pipeline to build."""
        return ([self.table(r) for r in self.params.get("tables", [])],
                [self.sweep(r) for r in self.params.get("figures", [])])

    def claims_of(self, paper: str) -> list[Claim]:
        """Every claim of a paper's tables, in declaration order."""
        return [c for t in self.tables.values() if t.paper == paper for c in t.claims]

    def runs_of(self, tables: list[Table], sweeps: list[Sweep]) -> list[Run]:
        return _unique(r for t in [*tables, *sweeps] for r in t.runs())

    def features_of(self, runs: list[Run]):
        """The cached features the runs train on (fine-tuned runs read the images instead)."""
        return list({r.features.id: r.features for r in runs if not r.finetuned}.values())

    # -- building ------------------------------------------------------------------------------
    def _add(self, run: Run, paper: str, presets: list[str]) -> Run:
        known = self.runs.setdefault(run.id, run)
        if known.hash != run.hash:  # two configurations, one name: a hash collision or a bug
            raise DmlReproError(f"run {run.id} resolves to two configurations ({known.hash}, {run.hash})")
        wanted = self.params["evaluation"].get("test_every_epoch") or run.config["evaluation"].get("test_every_epoch")
        self.needs.setdefault(run.id, Needs()).test_every_epoch |= bool(wanted)
        for key in presets:  # the declaration's settings it follows (DVC tracks them as params)
            self.presets_of.setdefault(run.id, set()).add((paper, key))
        return known


def _unique(runs) -> list[Run]:
    return list({r.id: r for r in runs}.values())


def _paper_files(params: Mapping[str, Any]) -> list[Path]:
    folder = Path(params["paths"]["papers"])
    if not folder.is_dir():
        raise DmlReproError(f"paths.papers: folder {folder} not found (it holds one <paper>.yaml per paper)")
    return sorted(folder.glob("*.yaml"))


_ROW_KEYS = {"label", "method", "preset", "overrides", "published", "tuned"}


def _where(decl: Any, path) -> str:
    """'tables.t.rows.0' -> "tables.t.rows.0 (row 'A')": name the row a user wrote."""
    text, node = ".".join(map(str, path)) or "(top)", decl
    for i, part in enumerate(path):
        node = node[part] if isinstance(node, (dict, list)) else None
        if i >= 3 and path[i - 1] == "rows" and isinstance(node, dict) and "label" in node:
            text = text.replace(f"rows.{part}", f"rows.{part} (row {node['label']!r})", 1)
    return text


def _schema_errors(decl: Any) -> list[str]:
    import jsonschema

    errors = []
    for e in jsonschema.Draft202012Validator(paper_schema()).iter_errors(decl):
        if e.validator == "unevaluatedProperties" and isinstance(e.instance, dict) \
                and set(e.instance) <= _ROW_KEYS | {"table", "row"}:
            continue  # a consequence of another error in the same row, not a problem of its own
        message = e.message
        if "propertyNames" in e.schema_path and "overrides" in e.absolute_path:  # a key outside the run sections
            message = (f"override key {e.instance!r} is not a run key; it must start with one of: "
                       "backbone, regime, extract, finetune, method, train, evaluation")
        errors.append(f"{_where(decl, list(e.absolute_path))}: {message}")
    return errors


def load_declaration(path: Path) -> dict:
    try:
        decl = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise DmlReproError(f"{path} is not valid YAML: {exc}") from None
    errors = _schema_errors(decl)
    if not errors and decl["paper"] != path.stem:
        errors.append(f"paper: {decl['paper']!r} must equal the file name {path.stem!r}")
    if errors:
        raise DmlReproError(f"invalid declaration {path}:\n" + "\n".join(f"  - {e}" for e in errors))
    return decl


def load_study(params: dict) -> Study:
    """Expand every declaration under paths.papers; raise DmlReproError naming file, entry and fix."""
    study = Study(params)
    problems: list[str] = []
    for path in _paper_files(params):
        decl = load_declaration(path)
        paper = decl["paper"]
        study.papers[paper], study.paper_files[paper] = decl, path
        problems += _unknown_settings_targets(params, decl, path)
        for name, tdecl in decl.get("tables", {}).items():
            try:
                study.tables[f"{paper}/{name}"] = _expand_table(study, paper, name, tdecl, path)
            except DmlReproError as exc:
                problems.append(str(exc))
        for name, sdecl in decl.get("sweeps", {}).items():
            try:
                study.sweeps[f"{paper}/{name}"] = _expand_sweep(study, paper, name, sdecl, path)
            except DmlReproError as exc:
                problems.append(str(exc))
    for key, kind in (("tables", study.tables), ("figures", study.sweeps)):
        for ref in params.get(key, []):
            paper, _, entry = ref.partition("/")
            declared_in_file = entry in study.papers.get(paper, {}).get(key if key == "tables" else "sweeps", {})
            if ref not in kind and not declared_in_file:  # (a declared one that failed is reported above)
                problems.append(f"params.yaml {key}: {ref!r} is not declared (declared: {', '.join(sorted(kind)) or '(none)'})")
    if problems:
        raise DmlReproError("invalid study:\n" + "\n".join(f"  - {p}" for p in problems))
    return study


def _unknown_settings_targets(params: Mapping[str, Any], decl: dict, path: Path) -> list[str]:
    """Real settings for a dataset or method params.yaml does not define would never apply: say so."""
    datasets, methods = params.get("datasets", {}), params.get("methods", {})
    where_sets = [("real_settings", decl.get("real_settings", {}))]
    where_sets += [(f"tables.{t}.real_settings", tdecl.get("real_settings", {}))
                   for t, tdecl in decl.get("tables", {}).items()]
    problems = []
    for key in ("method_real_settings", "tuned_settings"):
        for method, per_dataset in decl.get(key, {}).items():
            if method not in methods:
                problems.append(f"{path} {key}: {method!r} is not a params.yaml method "
                                f"(methods: {', '.join(sorted(methods))})")
            where_sets.append((f"{key}.{method}", per_dataset))
    for where, per_dataset in where_sets:
        problems += [f"{path} {where}: {d!r} is not a params.yaml dataset (datasets: {', '.join(sorted(datasets))})"
                     for d in per_dataset if d not in datasets]
    return problems


def _seeds(params: Mapping[str, Any], decl: Mapping[str, Any]) -> list[int]:
    return list(decl.get("seeds", params["seeds"]))


def _layers(decl: dict, paper: str, entry: Mapping[str, Any], where: str, dataset: str,
            table: tuple[str, Mapping] | None = None) -> tuple[list[tuple], list[str]]:
    """The row's layers in order, and the paper-file keys of the named settings among them (DVC
    tracks those as params: a preset, real settings, one method's real settings)."""
    layers, keys = [], []

    def named(key: str, overrides: Mapping, naming: Mapping) -> None:
        layers.append((f"{where} {key}", overrides, naming))
        keys.append(key)

    if dataset in decl.get("real_settings", {}):  # the authors' settings on a real benchmark come first
        named(f"real_settings.{dataset}", decl["real_settings"][dataset],
              {"real_settings": f"{paper}.{dataset}"})  # named by paper: each has its own
    if table and dataset in table[1].get("real_settings", {}):  # then a table's own (e.g. its backbone)
        named(f"tables.{table[0]}.real_settings.{dataset}", table[1]["real_settings"][dataset],
              {"real_settings": f"{paper}.{table[0]}.{dataset}"})
    method = entry["method"]
    if dataset in decl.get("method_real_settings", {}).get(method, {}):  # then one method's (e.g. its lr)
        named(f"method_real_settings.{method}.{dataset}", decl["method_real_settings"][method][dataset],
              {"method_real_settings": f"{paper}.{method}.{dataset}"})
    if entry.get("tuned"):  # then the method's own settings chosen on validation for this dataset
        tuned = decl.get("tuned_settings", {}).get(method, {})
        if dataset not in tuned:
            raise DmlReproError(f"{where}: the row asks for tuned settings, but tuned_settings.{method} has none "
                                f"for {dataset!r} (datasets: {', '.join(tuned) or '(none)'})")
        named(f"tuned_settings.{method}.{dataset}", tuned[dataset], {"tuned_settings": f"{paper}.{method}.{dataset}"})
    preset = entry.get("preset")
    if preset is not None:
        presets = decl.get("presets", {})
        if preset not in presets:
            raise DmlReproError(f"{where}: preset {preset!r} is not defined in this file "
                                f"(presets: {', '.join(presets) or '(none)'})")
        named(f"presets.{preset}", presets[preset], {"preset": preset})
    if entry.get("overrides"):
        layers.append((f"{where} overrides", entry["overrides"], entry["overrides"]))
    return layers, keys


def _check_run(params: Mapping[str, Any], run: Run, where: str) -> None:
    from .params import section_problems

    problems = section_problems(run.config)
    ks = run.config["evaluation"]["ks"]
    if not problems and run.settings.train is not None:  # settings are built from a valid configuration
        selection = run.settings.train.selection_metric
        m = re.fullmatch(r"recall@(\d+)", selection)
        if m and int(m.group(1)) not in ks:
            problems.append(f"train.selection_metric {selection} needs {m.group(1)} in evaluation.ks {ks}")
    if problems:
        raise DmlReproError(f"{where} resolves to an invalid run configuration:\n" +
                            "\n".join(f"    - {p}" for p in problems))


def _check_nmi(metric: str, split: str, protocols, where: str) -> None:
    """NMI (k-means) is computed on the evaluation sets, for the honest and the papers' protocols."""
    if metric != "nmi":
        return
    if split == "val":
        raise DmlReproError(f"{where}: NMI is computed on the evaluation sets only, not on 'val'")
    if "last_epoch" in protocols:
        raise DmlReproError(f"{where}: NMI is computed for the honest and paper protocols only, not last_epoch")


def _check_metric(metric: str, ks: list[int], where: str) -> None:
    m = re.fullmatch(r"recall@(\d+)", metric)
    if m and int(m.group(1)) not in ks:
        raise DmlReproError(f"{where}: metric {metric} needs k={m.group(1)} in evaluation.ks (now {ks})")


def _resolve(study: Study, decl: dict, paper: str, entry: Mapping, dataset: str, seeds, where: str,
             extra: list | None = None, table: tuple[str, Mapping] | None = None) -> list[Run]:
    params = study.params
    method = entry["method"]
    try:
        default_config(params, dataset, method)  # the dataset and the method are defined
    except DmlReproError as exc:
        raise DmlReproError(f"{where}: {exc}") from None
    layers, presets = _layers(decl, paper, entry, where, dataset, table)
    layers += extra or []
    runs = []
    for seed in seeds:
        run = resolve_run(params, dataset, method, seed, layers)
        _check_run(params, run, where)
        runs.append(study._add(run, paper, presets))
    return _unique(runs)  # a training-free method is one run whatever the seed


def has_root(params: Mapping[str, Any], dataset: str) -> bool:
    """Whether a real benchmark's params.yaml entry points at the user's copy (`root:` set)."""
    return bool((params["datasets"].get(dataset) or {}).get("root"))


def _columns_on_real_data(params: Mapping[str, Any], tdecl: dict, where: str) -> dict:
    """The table with each column that names a `real` benchmark moved onto it when the user has set
    that benchmark's root; the others stay on their stand-in (labelled by `as`)."""
    columns = []
    for col in tdecl["columns"]:
        real = col.get("real")
        if real is not None and real not in params["datasets"]:
            raise DmlReproError(f"{where} column {col['key']!r}: real dataset {real!r} is not defined in "
                                f"params.yaml (datasets: {', '.join(params['datasets'])})")
        if real is not None and has_root(params, real):
            col = {**{k: v for k, v in col.items() if k != "as"}, "dataset": real, "stand_in": col["dataset"]}
        columns.append(col)
    return {**tdecl, "columns": columns}


def _expand_table(study: Study, paper: str, name: str, tdecl: dict, path: Path) -> Table:
    tdecl = _columns_on_real_data(study.params, tdecl, f"{path} tables.{name}")
    seeds = _seeds(study.params, tdecl)
    keys = [c["key"] for c in tdecl["columns"]]
    if len(set(keys)) != len(keys):
        raise DmlReproError(f"{path} tables.{name}: column keys must be unique (got {keys})")
    datasets = list(dict.fromkeys(c["dataset"] for c in tdecl["columns"]))
    protocols = tdecl.get("protocols", ["honest"])
    for col in tdecl["columns"]:
        where = f"{path} tables.{name} column {col['key']!r}"
        if col["dataset"] not in study.params["datasets"]:
            raise DmlReproError(f"{where}: dataset {col['dataset']!r} is not defined in params.yaml "
                                f"(datasets: {', '.join(study.params['datasets'])})")
        _check_nmi(col["metric"], col.get("split", "test"), protocols, where)
    # a column's stand-in and real benchmark both name it, whichever it runs on on this machine
    named = list(dict.fromkeys(n for c in tdecl["columns"] for n in (c["dataset"], c.get("stand_in"), c.get("real")) if n))
    for dataset in tdecl.get("unbuilt", {}):
        if dataset not in named:
            raise DmlReproError(f"{path} tables.{name} unbuilt: {dataset!r} is not a dataset of the table's columns "
                                f"({', '.join(named)})")
    rows, problems = [], []
    for i, rdecl in enumerate(tdecl["rows"]):
        try:
            rows.append(_expand_row(study, paper, name, tdecl, rdecl, i, path, datasets, seeds, protocols, keys))
        except DmlReproError as exc:  # report every row's problem at once
            problems.append(str(exc))
    if problems:
        raise DmlReproError("\n  - ".join(problems))
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        raise DmlReproError(f"{path} tables.{name}: row labels must be unique (got {labels})")
    claims = expand_claims(paper, name, study.papers[paper], tdecl, rows, f"{path} tables.{name}")
    return Table(paper, name, tdecl, seeds, rows, claims)


def _expand_row(study, paper, name, tdecl, rdecl, i, path, datasets, seeds, protocols, keys) -> Row:
    where = f"{path} tables.{name} row {rdecl['label']!r} (rows[{i}])"
    bad = sorted(set(rdecl.get("published", {})) - set(keys))
    if bad:
        raise DmlReproError(f"{where}: published values for unknown columns {bad} (columns: {', '.join(keys)})")
    runs = {d: _resolve(study, study.papers[paper], paper, rdecl, d, seeds, where, table=(name, tdecl))
            for d in datasets}
    from ..methods import method_labels

    for label in method_labels(next(iter(runs.values()))[0].config["method"]):
        if label not in rdecl["label"]:  # a reconstruction is never shown under the paper's name alone
            raise DmlReproError(f"{where}: the row's method uses {label}; its label must say so "
                                f"(e.g. {rdecl['label'] + ' + ' + label!r})")
    for col in tdecl["columns"]:
        _check_metric(col["metric"], runs[col["dataset"]][0].config["evaluation"]["ks"],
                      f"{path} tables.{name} column {col['key']!r}")
        for run in runs[col["dataset"]]:
            needs = study.needs[run.id]
            needs.nmi |= col["metric"] == "nmi"
            needs.test_every_epoch |= "paper" in protocols
            needs.last_epoch |= "last_epoch" in protocols
    return Row(rdecl["label"], rdecl["method"], rdecl.get("preset"), runs, dict(rdecl.get("published", {})))


def _sweep_base(decl: dict, sdecl: dict, where: str) -> dict:
    base = sdecl["base"]
    if "table" not in base:
        return base
    tables = decl.get("tables", {})
    if base["table"] not in tables:
        raise DmlReproError(f"{where}: base table {base['table']!r} is not declared in this file "
                            f"(tables: {', '.join(tables) or '(none)'})")
    rows = {r["label"]: r for r in tables[base["table"]]["rows"]}
    if base["row"] not in rows:
        raise DmlReproError(f"{where}: base row {base['row']!r} is not in table {base['table']!r} "
                            f"(rows: {', '.join(rows)})")
    return rows[base["row"]]


def _expand_sweep(study: Study, paper: str, name: str, sdecl: dict, path: Path) -> Sweep:
    where = f"{path} sweeps.{name}"
    base = _sweep_base(study.papers[paper], sdecl, where)
    seeds = _seeds(study.params, sdecl)
    published = sdecl.get("published", {})
    _check_nmi(sdecl["metric"], sdecl.get("split", "test"), [sdecl.get("protocol", "honest")], where)
    for dataset, curve in published.items():
        if dataset not in sdecl["datasets"] or len(curve) != len(sdecl["values"]):
            raise DmlReproError(f"{where}: published curve for {dataset!r} must be one of the sweep's datasets "
                                f"and have one value per point ({len(sdecl['values'])})")
    points = []
    for dataset in sdecl["datasets"]:
        for value in sdecl["values"]:
            point_where = f"{where} {sdecl['parameter']}={value}"
            point = {sdecl["parameter"]: value}
            runs = _resolve(study, study.papers[paper], paper, base, dataset, seeds, point_where,
                            extra=[(point_where, point, point)])
            _check_metric(sdecl["metric"], runs[0].config["evaluation"]["ks"], where)
            for run in runs:
                study.needs[run.id].nmi |= sdecl["metric"] == "nmi"
                study.needs[run.id].test_every_epoch |= sdecl.get("protocol", "honest") == "paper"
                study.needs[run.id].last_epoch |= sdecl.get("protocol", "honest") == "last_epoch"
            points.append(SweepPoint(dataset, value, runs))
    return Sweep(paper, name, sdecl, seeds, points)
