# dmlrepro pipeline: prepare -> extract -> train -> evaluate -> tables.
# Every rule calls the `dmlrepro` CLI, exactly as the stages of dvc.yaml do.
configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


onstart:
    # Create the MLflow store once, before parallel jobs can race to create it.
    shell(f"dmlrepro --params {PARAMS_FILE} mlflow-init")


onsuccess:
    # Hand the build to DVC (dvc.lock), so a following `dvc status` is clean and `dvc exp run -S ...`
    # reruns only what the change touches. Only for params.yaml, which dvc.yaml is generated from.
    if PARAMS_FILE == "params.yaml":
        shell("dmlrepro dvc-commit || echo 'dmlrepro: the build was not recorded in DVC (see above)'")


rule all:
    input:
        selected_outputs,
    default_target: True
