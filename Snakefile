# dmlrepro pipeline: prepare -> extract -> train -> evaluate -> tables.
# Every rule calls the `dmlrepro` CLI, exactly as the stages of dvc.yaml do.
configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


rule all:
    input:
        selected_outputs,
    default_target: True
