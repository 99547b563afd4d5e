rule evaluate:
    input:
        model=f"models/{EXP}/{{run}}",
        split=lambda w: f"{DATA}/{amvl_config.resolve_run(config, w.run)['evaluate']['split']}.parquet",
    output:
        f"results/{EXP}/{{run}}/metrics.json",
    params:
        config=lambda w: stage_json("evaluate", w.run),
        data=lambda w, input: os.path.dirname(input.split),
        out=lambda w, output: os.path.dirname(output[0]),
    threads: lambda w: amvl_config.resolve_run(config, w.run)["evaluate"]["threads"] or workflow.cores
    resources:
        gpu=lambda w: amvl_config.evaluate_gpus(config, w.run),  # one GPU, where it runs on one
    conda:
        "../../envs/amvl.yaml"
    log:
        f"logs/{EXP}/evaluate/{{run}}.log",
    shell:
        "amvl evaluate --config-json {params.config:q} --model {input.model} --data {params.data}"
        " --out {params.out} --threads {threads} 2>&1 | tee {log}"
