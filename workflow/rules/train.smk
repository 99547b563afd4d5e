# Only train_summary.json is declared: Snakemake deletes a job's declared outputs before it
# reruns, and the checkpoints under runs/<experiment>/<run>/checkpoints/ must survive a kill to resume.
rule train:
    input:
        train=f"{DATA}/train.parquet",
        deepspeed=lambda w: amvl_config.resolve_run(config, w.run)["train"]["deepspeed_config"],
        # model.init_from: the run it starts from is trained and converted first
        warm_start=lambda w: warm_start(w.run),
    output:
        f"runs/{EXP}/{{run}}/train_summary.json",
    params:
        config=lambda w: stage_json("train", w.run),
        # `amvl`, or the configured launcher (deepspeed, torchrun) starting `python -m amvl` per process
        amvl=lambda w: amvl_config.launch_command(config, w.run),
        data=lambda w, input: os.path.dirname(input.train),
        out=lambda w, output: os.path.dirname(output[0]),
    # train.threads > 0 caps a run's threads, so Snakemake can train several runs side by side
    threads: job_threads("train")
    resources:
        **job_resources("train"),
    conda:
        "../../envs/amvl.yaml"
    log:
        f"logs/{EXP}/train/{{run}}.log",
    shell:
        "{params.amvl} train --config-json {params.config:q} --data {params.data} --out {params.out}"
        " --threads {threads} 2>&1 | tee {log}"
