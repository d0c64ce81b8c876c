rule extract:
    input:
        f"{PATHS['data']}/{{dataset}}",
    output:
        FEATURES,
    params:
        backbone=canonical(config["backbone"]),
        extract=canonical(config["extract"]),
    log:
        f"{LOGS}/extract/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/extract/{{dataset}}.tsv"
    threads: config["extract"].get("threads", 2)
    shell:
        "dmlrepro --params {PARAMS_FILE} extract --dataset {wildcards.dataset} 2>&1 | tee {log}"
