rule convert:
    input:
        "runs/{run}/train_summary.json",
    output:
        directory("models/{run}"),
    params:
        config=stage_json("convert"),
    conda:
        "../../envs/amvl.yaml"
    log:
        "logs/convert/{run}.log",
    shell:
        "amvl convert --config-json {params.config:q} --run-dir runs/{wildcards.run} --out {output} 2>&1 | tee {log}"
