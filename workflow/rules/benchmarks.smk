# A benchmark of config `benchmarks`, read from its local copy into the common schema once,
# shared by every experiment (the folder is the rerun trigger: point it elsewhere and it reruns).
rule prepare_benchmark:
    output:
        "data/benchmarks/{benchmark}/val.parquet",
    params:
        root=lambda w: config["benchmarks"][w.benchmark],
        out=lambda w, output: os.path.dirname(output[0]),
    threads: job_threads("other")
    resources:
        **job_resources("other"),
    conda:
        "../../envs/amvl.yaml"
    log:
        "logs/prepare/benchmarks/{benchmark}.log",
    shell:
        "amvl prepare --benchmark {wildcards.benchmark} --root {params.root:q} --out {params.out} 2>&1 | tee {log}"
