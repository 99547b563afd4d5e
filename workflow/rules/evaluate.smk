rule evaluate:
    input:
        model="models/{run}",
        split=lambda w: f"{DATA}/{amvl_config.resolve_run(config, w.run)['evaluate']['split']}.parquet",
    output:
        "results/{run}/metrics.json",
    params:
        config=lambda w: stage_json("evaluate", w.run),
        data=lambda w, input: os.path.dirname(input.split),
    threads: lambda w: amvl_config.resolve_run(config, w.run)["train"]["threads"] or workflow.cores
    conda:
        "../../envs/amvl.yaml"
    log:
        "logs/evaluate/{run}.log",
    shell:
        "amvl evaluate --config-json {params.config:q} --model {input.model} --data {params.data}"
        " --out results/{wildcards.run} --threads {threads} 2>&1 | tee {log}"
