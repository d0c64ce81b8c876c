rule train:
    input:
        run_input,
        stages.stage_modules("train"),
    output:
        model=f"{RUN}/model.pt",
        history=f"{RUN}/history.json",
    params:
        settings=run_settings,
        flags=train_flags,
    log:
        f"{LOGS}/train/{{dataset}}/{{backbone}}/{{name}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{dataset}}/{{backbone}}/{{name}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: config["train"].get("threads", 1)
    shell:
        "dmlrepro train --run {wildcards.dataset}/{wildcards.backbone}/{wildcards.name}/seed{wildcards.seed}"
        " {params.flags} > {log} 2>&1"
