"""What each pipeline stage runs: its command, its inputs, its outputs and the package modules
behind it. The Snakefile's rules and the generated dvc.yaml both read these, so a code fix reruns
the same stages under either engine, and both engines declare the same files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..errors import DmlReproError
from ..paths import claims_paths, dataset_dir, figure_paths, table_paths
from .declarations import Study, Sweep, Table
from .imports import import_graph
from .runs import FeatureSet, Run

PACKAGE = Path("src/dmlrepro")
#: The pipeline's stages; each is run by `dmlrepro <stage>`, which calls its module dmlrepro.stages.<stage>.
STAGES = ("prepare", "extract", "train", "evaluate", "table", "figure", "claims")
#: The command itself, a file of every stage: its own imports are not followed (its functions parse
#: arguments, validate the study and call the stage's module, which does the work).
COMMAND = "cli.py"


def stage_entry(stage: str) -> str:
    """The module that runs `stage`."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return f"{PACKAGE.name}.stages.{stage}"


#: The params schema (src/dmlrepro/schema/ links to it): its `default`s are settings (study.settings).
SCHEMA = Path("workflow/schemas/params.schema.json")


def stage_modules(stage: str, root: Path = Path(".")) -> list[str]:
    """The package files a stage's command runs, sorted, as paths relative to the repository root:
    cli.py, plus the import closure of the stage's module (every import it and they make, at any
    depth, with the __init__.py of each package on the way; :mod:`.imports`), and the params schema
    when the settings its defaults fill are read. Computed from the
    code in `root` (from the installed package when `root` has no src/dmlrepro), so the lists
    cannot drift from the imports."""
    package_dir = root / PACKAGE
    if not package_dir.is_dir():
        package_dir = Path(__file__).resolve().parents[1]
    graph = import_graph(package_dir)
    entry = stage_entry(stage)
    if entry not in graph.modules:
        raise DmlReproError(f"stage {stage!r}: its module {entry} is missing from {package_dir}")
    closure = graph.closure(entry)
    files = {PACKAGE / COMMAND} | {PACKAGE.parent / f for f in graph.files(closure)}
    if "dmlrepro.study.settings" in closure:  # the schema's defaults fill the settings a run leaves out
        files.add(SCHEMA)
    return sorted(str(f) for f in files)


def features_inputs(params: Mapping, features: FeatureSet) -> list[str]:
    return [str(dataset_dir(params, features.dataset))]


def run_input(params: Mapping, run: Run) -> str:
    """What a run trains and is evaluated on: its cached features, or the prepared images when it
    is fine-tuned end to end."""
    return str(dataset_dir(params, run.dataset) if run.finetuned else run.features.path(params))


def run_files(params: Mapping, run: Run) -> dict[str, str]:
    folder = run.dir(params)
    return {name: str(folder / f"{name}.{ext}") for name, ext in
            (("model", "pt"), ("history", "json"), ("metrics", "json"))}


def target_inputs(params: Mapping, target: Table | Sweep) -> list[str]:
    """The files a table or figure is built from."""
    files = []
    for run in target.runs():
        f = run_files(params, run)
        files += [f["metrics"], f["history"]]
    return files


def target_outputs(params: Mapping, target: Table | Sweep) -> list[str]:
    paths = table_paths if isinstance(target, Table) else figure_paths
    return [str(p) for p in paths(params, target.paper, target.name)]


def claims_papers(study: Study) -> list[str]:
    """The papers whose claims page the pipeline builds: those with a selected table that has claims."""
    tables, _ = study.selected()
    return list(dict.fromkeys(t.paper for t in tables if t.claims))


def claims_inputs(study: Study, paper: str) -> list[str]:
    """A claims page is built from the selected tables of its paper (the page also reads, but does
    not wait for, the paper's other tables whose runs happen to be evaluated)."""
    tables, _ = study.selected()
    return [f for t in tables if t.paper == paper and t.claims
            for f in [*target_inputs(study.params, t), *target_outputs(study.params, t)]]


def claims_outputs(params: Mapping, paper: str) -> list[str]:
    return [str(p) for p in claims_paths(params, paper)]


def selected_outputs(study: Study) -> list[str]:
    tables, sweeps = study.selected()
    return [p for t in [*tables, *sweeps] for p in target_outputs(study.params, t)] + \
        [p for paper in claims_papers(study) for p in claims_outputs(study.params, paper)]


def job_counts(snakemake_output: str) -> dict:
    """{rule: count} of the first 'Job stats' table Snakemake prints (a dry run's plan, a build's jobs)."""
    counts, in_table = {}, False
    for line in snakemake_output.splitlines():
        if line.startswith("Job stats"):
            in_table = True
        elif in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            if parts and parts[0] == "total":
                break
    return counts
