rule convert:
    input:
        f"runs/{EXP}/{{run}}/train_summary.json",
    output:
        directory(f"models/{EXP}/{{run}}"),
    params:
        config=stage_json("convert"),
        run_dir=lambda w, input: os.path.dirname(input[0]),
    threads: job_threads("convert")
    resources:
        **job_resources("convert"),  # no GPU: consolidates the ZeRO checkpoint on the CPU
    conda:
        "../../envs/amvl.yaml"
    log:
        f"logs/{EXP}/convert/{{run}}.log",
    shell:
        "amvl convert --config-json {params.config:q} --run-dir {params.run_dir} --out {output} 2>&1 | tee {log}"
