rule extract:
    input:
        f"{PATHS['data']}/{{dataset}}",
        stages.stage_modules("extract"),
    output:
        FEATURES,
    params:
        settings=feature_settings,
    log:
        f"{LOGS}/extract/{{dataset}}/{{features}}.log",
    benchmark:
        f"{BENCHMARKS}/extract/{{dataset}}/{{features}}.tsv"
    conda:
        ENV
    threads: config["extract"].get("threads", 2)
    shell:
        "dmlrepro extract --features {wildcards.dataset}/{wildcards.features} 2>&1 | tee {log}"
