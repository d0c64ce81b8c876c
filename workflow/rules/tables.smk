rule table:
    input:
        table_inputs,
        paper_file,
        stages.stage_modules("table"),
    output:
        f"{PATHS['tables']}/{{paper}}/{{table}}.md",
        f"{PATHS['tables']}/{{paper}}/{{table}}.csv",
        report(f"{PATHS['tables']}/{{paper}}/{{table}}.html", caption=CAPTION, category="Tables",
               subcategory="{paper}"),
    params:
        caption=table_caption,
    log:
        f"{LOGS}/table/{{paper}}/{{table}}.log",
    benchmark:
        f"{BENCHMARKS}/table/{{paper}}/{{table}}.tsv"
    conda:
        ENV
    threads: 1
    shell:
        "dmlrepro table --table {wildcards.paper}/{wildcards.table} > {log} 2>&1"


rule figure:
    input:
        sweep_inputs,
        paper_file,
        stages.stage_modules("figure"),
    output:
        report(f"{PATHS['figures']}/{{paper}}/{{sweep}}.png", caption=CAPTION, category="Figures",
               subcategory="{paper}"),
        f"{PATHS['figures']}/{{paper}}/{{sweep}}.csv",
    params:
        caption=sweep_caption,
    log:
        f"{LOGS}/figure/{{paper}}/{{sweep}}.log",
    benchmark:
        f"{BENCHMARKS}/figure/{{paper}}/{{sweep}}.tsv"
    conda:
        ENV
    threads: 1
    shell:
        "dmlrepro figure --figure {wildcards.paper}/{wildcards.sweep} > {log} 2>&1"


rule claims:
    input:
        claims_inputs,
        paper_file,
        stages.stage_modules("claims"),
    output:
        f"{CLAIMS}/{{paper}}.md",
        f"{CLAIMS}/{{paper}}.csv",
        report(f"{CLAIMS}/{{paper}}.html", caption=CAPTION, category="Claims"),
    params:
        caption=claims_caption,
    log:
        f"{LOGS}/claims/{{paper}}.log",
    benchmark:
        f"{BENCHMARKS}/claims/{{paper}}.tsv"
    conda:
        ENV
    threads: 1
    shell:
        "dmlrepro claims --paper {wildcards.paper} > {log} 2>&1"
