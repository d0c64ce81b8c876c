# Validation, the study (every run the paper declarations need) and helpers shared by every rule.
import json

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from dmlrepro.paths import claims_paths
from dmlrepro.errors import DmlReproError
from dmlrepro.study import load_study
from dmlrepro.study import stages
from dmlrepro.study.params import validate_params
from dmlrepro.study.runs import semantic as dml_semantic


PARAMS_FILE = workflow.configfiles[-1] if workflow.configfiles else "params.yaml"

try:  # the CLI's validation names the key, the bad value and what is allowed
    validate_params(config, source=PARAMS_FILE)
    STUDY = load_study(config)
except DmlReproError as exc:
    raise WorkflowError(str(exc))
validate(config, "../schemas/params.schema.json", set_default=False)

# Every job's `dmlrepro` reads the same params file (passed by environment, so that switching
# --configfile does not count as a changed setting of every job).
shell.prefix(f"export DMLREPRO_PARAMS={PARAMS_FILE}; ")

PATHS = config["paths"]
RUN = f"{PATHS['runs']}/{{dataset}}/{{backbone}}/{{name}}/seed{{seed}}"
FEATURES = f"{PATHS['features']}/{{dataset}}/{{features}}.npz"
CLAIMS = str(claims_paths(config, "_")[0].parent)  # results/claims
LOGS = "results/logs"
BENCHMARKS = "results/benchmarks"
CAPTION = "../report/caption.rst"
ENV = "../envs/dmlrepro.yaml"


wildcard_constraints:
    dataset="[a-z][a-z0-9_]*",
    backbone="[a-z][a-z0-9_]*",
    features=r"[a-z][a-z0-9_]*(-[0-9a-f]{8})?",
    name=r"[a-z][a-z0-9_]*(-[0-9a-f]{8})?",
    seed=r"\d+",
    paper="[a-z][a-z0-9_]*",
    table="[a-z][a-z0-9_]*",
    sweep="[a-z][a-z0-9_]*",


def canonical(settings):
    """Settings as sorted JSON: Snakemake compares params by text, so key order must not count."""
    return json.dumps(settings, sort_keys=True)


def selected_outputs(wildcards):
    return stages.selected_outputs(STUDY)


def run_of(wildcards):
    return STUDY.run(f"{wildcards.dataset}/{wildcards.backbone}/{wildcards.name}/seed{wildcards.seed}")


def features_of(wildcards):
    feature_id = f"{wildcards.dataset}/{wildcards.features}"
    found = {r.features.id: r.features for r in STUDY.runs.values()}
    if feature_id not in found:
        raise WorkflowError(f"no declared run uses features {feature_id}")
    return found[feature_id]


def dataset_settings(wildcards):
    return canonical(dml_semantic({"data": config["datasets"][wildcards.dataset]}))


def feature_settings(wildcards):
    return canonical(dml_semantic(features_of(wildcards).config))


def run_input(wildcards):
    return stages.run_input(config, run_of(wildcards))


def run_settings(wildcards):
    return canonical(dml_semantic(run_of(wildcards).config))


def train_flags(wildcards):
    return STUDY.needs[run_of(wildcards).id].train_flags()


def evaluate_flags(wildcards):
    return STUDY.needs[run_of(wildcards).id].evaluate_flags()


def table_inputs(wildcards):
    return stages.target_inputs(config, STUDY.table(f"{wildcards.paper}/{wildcards.table}"))


def sweep_inputs(wildcards):
    return stages.target_inputs(config, STUDY.sweep(f"{wildcards.paper}/{wildcards.sweep}"))


def claims_inputs(wildcards):
    return stages.claims_inputs(STUDY, wildcards.paper)


def claims_caption(wildcards):
    return (f"The claims of {STUDY.papers[wildcards.paper].get('title', wildcards.paper)}: each published "
            "improvement as our paired difference over seeds, its 95% interval and a computed verdict.")


def table_caption(wildcards):
    return STUDY.table(f"{wildcards.paper}/{wildcards.table}").caption


def sweep_caption(wildcards):
    return STUDY.sweep(f"{wildcards.paper}/{wildcards.sweep}").caption


def paper_file(wildcards):
    return str(STUDY.paper_files[wildcards.paper])

