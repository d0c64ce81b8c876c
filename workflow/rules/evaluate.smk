rule evaluate:
    input:
        run_input,
        f"{RUN}/model.pt",
        stages.stage_modules("evaluate"),
    output:
        f"{RUN}/metrics.json",
    params:
        ks=canonical(config["evaluation"]["ks"]),
        flags=evaluate_flags,
    log:
        f"{LOGS}/evaluate/{{dataset}}/{{backbone}}/{{name}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{dataset}}/{{backbone}}/{{name}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: config["evaluation"].get("threads", 1)
    shell:
        "dmlrepro evaluate --run {wildcards.dataset}/{wildcards.backbone}/{wildcards.name}/seed{wildcards.seed}"
        " {params.flags} > {log} 2>&1"
