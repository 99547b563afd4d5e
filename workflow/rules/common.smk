import functools
import json
import os


def stage_json(stage, run=None):
    """The config sections `stage` reads, as JSON: the rule's params, hence its rerun trigger."""
    return json.dumps(amvl_config.stage_config(config, stage, run), sort_keys=True)


def warm_start(run):
    """The converted model a run starts from (model.init_from), or nothing."""
    start = amvl_config.resolve_run(config, run)["model"]["init_from"]
    return [amvl_config.model_folder(config, start)] if start else []


@functools.cache
def slurm_jobs():
    """Each job's SLURM resources by (stage, run) and "other" (amvl/cluster.py), or None where
    Snakemake runs the jobs itself. Planned at the first job: Snakemake knows its executor only
    after reading the Snakefile."""
    try:
        return amvl_cluster.plan(config, GPUS, EVAL_GPUS) if amvl_cluster.on_slurm(workflow) else None
    except ConfigError as error:
        sys.exit(f"config error: {error}")


def slurm_job(stage, w):
    """What one job of `stage` asks of SLURM (amvl/cluster.py), or None where Snakemake runs it."""
    jobs = slurm_jobs()
    return None if jobs is None else jobs.get((stage, w.get("run")), jobs["other"])


def job_threads(stage):
    """A job's threads: train.threads / evaluate.threads, else every core Snakemake has (other
    stages: one); on SLURM, the CPUs the job asks."""

    def threads(w):
        if slurm_jobs() is not None:
            return slurm_job(stage, w)["cpus_per_task"]
        if stage in ("train", "evaluate"):
            return amvl_config.resolve_run(config, w.run)[stage]["threads"] or workflow.cores
        return 1

    return threads


def job_resources(stage):
    """A rule's resources. Locally only `gpu` counts: the GPUs each job's launcher starts processes
    on, so --resources gpu=8 never runs two 8-GPU jobs at once. On SLURM: what each job asks of
    the cluster (partition, memory, GPUs, nodes, run time; CPUs are its threads)."""
    gpus = {"train": GPUS, "evaluate": EVAL_GPUS}.get(stage, {})

    def value(w, key):
        if slurm_jobs() is None:
            return gpus.get(w.get("run"), 0) if key == "gpu" else amvl_cluster.UNSET[key]
        return slurm_job(stage, w)[key]

    return {key: (lambda w, key=key: value(w, key)) for key in amvl_cluster.UNSET}
