rule table:
    input:
        inputs_of_table,
        f"{config['paths']['papers']}/{{paper}}.yaml",
    output:
        f"{PATHS['tables']}/{{paper}}/{{table}}.md",
        f"{PATHS['tables']}/{{paper}}/{{table}}.csv",
    log:
        f"{LOGS}/table/{{paper}}/{{table}}.log",
    benchmark:
        f"{BENCHMARKS}/table/{{paper}}/{{table}}.tsv"
    threads: 1
    shell:
        "dmlrepro --params {PARAMS_FILE} table --table {wildcards.paper}/{wildcards.table} > {log} 2>&1"
