# Validation, paths and helpers shared by every rule.
import json

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from dmlrepro import config as dml
from dmlrepro.errors import DmlReproError
from dmlrepro.tables import table_inputs, table_paths


PARAMS_FILE = workflow.configfiles[-1] if workflow.configfiles else "params.yaml"

try:  # the CLI's validation names the key, the bad value and what is allowed
    dml.validate_params(config, source=PARAMS_FILE)
except DmlReproError as exc:
    raise WorkflowError(str(exc))
validate(config, "../schemas/params.schema.json", set_default=False)

PATHS = config["paths"]
BACKBONE = config["backbone"]["name"]
RUN = f"{PATHS['runs']}/{{dataset}}/{BACKBONE}/{{method}}/seed{{seed}}"
FEATURES = f"{PATHS['features']}/{{dataset}}/{BACKBONE}.npz"
LOGS = "results/logs"
BENCHMARKS = "results/benchmarks"


wildcard_constraints:
    dataset="[a-z][a-z0-9_]*",
    method="[a-z][a-z0-9_]*",
    seed=r"\d+",
    paper="[a-z][a-z0-9_]*",
    table="[a-z][a-z0-9_]*",


onstart:
    # Create the MLflow store once, before parallel jobs can race to create it.
    shell(f"dmlrepro --params {PARAMS_FILE} mlflow-init")


def all_tables(wildcards):
    outputs = []
    for ref in config["tables"]:
        paper, table = ref.split("/")
        outputs += [str(p) for p in table_paths(config, paper, table)]
    return outputs


def inputs_of_table(wildcards):
    return table_inputs(config, f"{wildcards.paper}/{wildcards.table}")


def canonical(settings):
    """Settings as sorted JSON: Snakemake compares params by text, so key order must not count."""
    return json.dumps(settings, sort_keys=True)


def dataset_params(wildcards):
    return canonical(config["datasets"][wildcards.dataset])


def method_params(wildcards):
    return canonical(config["methods"][wildcards.method])
