# A run is evaluated from its converted model, or (objective none, zero-shot) from
# model.pretrained_path as it is, through the same command either way.
rule evaluate:
    input:
        model=lambda w: amvl_config.model_folder(config, w.run),
        split=lambda w: f"{DATA}/{amvl_config.resolve_run(config, w.run)['evaluate']['split']}.parquet",
    output:
        f"results/{EXP}/{{run}}/metrics.json",
    params:
        config=lambda w: stage_json("evaluate", w.run),
        # `amvl`, or the configured launcher (torchrun) starting `python -m amvl` per process
        amvl=lambda w: amvl_config.launch_command(config, w.run, "evaluate", w.get("benchmark", "")),
        benchmark=lambda w: f"--benchmark {w.benchmark}" if "benchmark" in w.keys() else "",
        data=lambda w, input: os.path.dirname(input.split),
        out=lambda w, output: os.path.dirname(output[0]),
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),  # GPUs: its launcher's, or one where it runs on one
    conda:
        "../../envs/amvl.yaml"
    log:
        f"logs/{EXP}/evaluate/{{run}}.log",
    shell:
        "{params.amvl} evaluate --config-json {params.config:q} --model {input.model:q} --data {params.data}"
        " {params.benchmark} --out {params.out} --threads {threads} 2>&1 | tee {log}"


# Every run on every configured benchmark (config `benchmarks`), one job each.
use rule evaluate as evaluate_benchmark with:
    input:
        model=lambda w: amvl_config.model_folder(config, w.run),
        split="data/benchmarks/{benchmark}/val.parquet",
    output:
        f"results/{EXP}/{{run}}/{{benchmark}}/metrics.json",
    log:
        f"logs/{EXP}/evaluate/{{run}}.{{benchmark}}.log",
