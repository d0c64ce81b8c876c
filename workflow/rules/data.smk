rule prepare:
    input:
        stages.stage_modules("prepare"),
    output:
        directory(f"{PATHS['data']}/{{dataset}}"),
    params:
        dataset=dataset_settings,
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare/{{dataset}}.tsv"
    conda:
        ENV
    threads: 16  # capped at --cores by Snakemake
    shell:
        "dmlrepro prepare --dataset {wildcards.dataset} 2>&1 | tee {log}"
