rule prepare:
    output:
        directory(f"{PATHS['data']}/{{dataset}}"),
    params:
        dataset=dataset_params,
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare/{{dataset}}.tsv"
    threads: workflow.cores
    shell:
        "dmlrepro --params {PARAMS_FILE} prepare --dataset {wildcards.dataset} 2>&1 | tee {log}"
