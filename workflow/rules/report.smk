rule report:
    input:
        metrics=expand("results/{run}/metrics.json", run=RUNS),
        summaries=expand("runs/{run}/train_summary.json", run=RUNS),
    output:
        report="reports/report.md",
        # also in `snakemake --report report.html`: the self-contained page and its main figures
        html=report("reports/report.html", category="AMVL report"),
        curves=report("reports/training_curves.png", category="Figures"),
    params:
        config=stage_json("report"),
    conda:
        "../../envs/amvl.yaml"
    log:
        "logs/report.log",
    shell:
        "amvl report --config-json {params.config:q} --metrics {input.metrics} --summaries {input.summaries}"
        " --out reports 2>&1 | tee {log}"
