rule train:
    input:
        FEATURES,
    output:
        model=f"{RUN}/model.pt",
        history=f"{RUN}/history.json",
    params:
        train=canonical(config["train"]),
        method=method_params,
        evaluation=canonical(config["evaluation"]),
    log:
        f"{LOGS}/train/{{dataset}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{dataset}}/{{method}}/seed{{seed}}.tsv"
    threads: config["train"].get("threads", 1)
    shell:
        "dmlrepro --params {PARAMS_FILE} train --dataset {wildcards.dataset}"
        " --method {wildcards.method} --seed {wildcards.seed} > {log} 2>&1"
