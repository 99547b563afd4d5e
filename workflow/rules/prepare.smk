rule prepare:
    input:
        # The records file, when one is configured (the images it points to are not tracked).
        records=[config["data"]["train_records"]] if config["data"]["train_records"] else [],
    output:
        train=f"{DATA}/train.parquet",
        val=f"{DATA}/val.parquet",
        meta=f"{DATA}/dataset.json",
    params:
        config=stage_json("prepare"),
        out=lambda w, output: os.path.dirname(output.train),
        # recorded in dataset.json: another experiment with other data settings may not prepare over it
        owner=amvl_config.dataset_owner(config),
    threads: job_threads("other")
    resources:
        **job_resources("other"),
    conda:
        "../../envs/amvl.yaml"
    log:
        f"logs/prepare/{config['dataset']}.log",
    shell:
        "amvl prepare --config-json {params.config:q} --experiment {params.owner} --out {params.out} 2>&1 | tee {log}"
