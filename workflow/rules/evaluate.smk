rule evaluate:
    input:
        FEATURES,
        f"{RUN}/model.pt",
    output:
        f"{RUN}/metrics.json",
    params:
        evaluation=canonical(config["evaluation"]),
    log:
        f"{LOGS}/evaluate/{{dataset}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{dataset}}/{{method}}/seed{{seed}}.tsv"
    threads: config["evaluation"].get("threads", 1)
    shell:
        "dmlrepro --params {PARAMS_FILE} evaluate --dataset {wildcards.dataset}"
        " --method {wildcards.method} --seed {wildcards.seed} > {log} 2>&1"
