rule report:
    input:
        metrics=expand(f"results/{EXP}/{{run}}/metrics.json", run=RUNS),
        benchmarks=expand(f"results/{EXP}/{{run}}/{{benchmark}}/metrics.json", run=RUNS, benchmark=BENCHMARKS),
        summaries=expand(f"runs/{EXP}/{{run}}/train_summary.json", run=TRAINED),
    output:
        report=f"reports/{EXP}/report.md",
        # also in `snakemake --report report.html`: the self-contained page and its main figures
        html=report(f"reports/{EXP}/report.html", category="AMVL report"),
        curves=report(f"reports/{EXP}/training_curves.png", category="Figures"),
    params:
        config=stage_json("report"),
        out=lambda w, output: os.path.dirname(output.report),
    threads: job_threads("other")
    resources:
        **job_resources("other"),
    conda:
        "../../envs/amvl.yaml"
    log:
        f"logs/{EXP}/report.log",
    shell:
        "amvl report --config-json {params.config:q} --metrics {input.metrics} {input.benchmarks}"
        " --summaries {input.summaries} --out {params.out} 2>&1 | tee {log}"
