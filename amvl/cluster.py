"""A SLURM cluster: what each job asks of it, and a watch for jobs that no node can ever run.

What the cluster offers (partitions, account, node sizes, run times) lives in one small file,
profiles/slurm/cluster.yaml, or the file AMVL_SLURM_CLUSTER names, validated against
workflow/schemas/cluster.schema.yaml; the profile's body never needs editing. The rules turn
it into each job's SLURM resources (`job_resources`), and the workflow watches its pending jobs:
SLURM leaves a job that asks more than any node of its partition has pending for ever (reason
PartitionConfig), so `watch_pending` names it in one line, cancels it and stops the workflow.
"""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from amvl import config as amvl_config
from amvl.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CLUSTER_ENV = "AMVL_SLURM_CLUSTER"
DEFAULT_CLUSTER_FILE = REPO / "profiles" / "slurm" / "cluster.yaml"
SCHEMA_PATH = amvl_config.SCHEMA_PATH.with_name("cluster.schema.yaml")

# Pending reasons that no amount of waiting changes: the job asks more than its partition's
# nodes, node count or time limit allow, or what its account or QOS may ever have.
NEVER_STARTS = {
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
    "InvalidQOS", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "QOSMaxMemoryPerJob", "QOSMaxNodePerJobLimit",
    "QOSMaxWallDurationPerJobLimit",
}  # fmt: skip


# The SLURM resources every rule declares, as they read where Snakemake runs the jobs itself.
UNSET = {"slurm_partition": "", "slurm_account": "", "slurm_extra": "", "nodes": 1, "mem_mb": 0, "runtime": 0, "gpu": 0}


def cluster_file() -> Path:
    return Path(os.environ.get(CLUSTER_ENV) or DEFAULT_CLUSTER_FILE)


def load(path: Path | None = None) -> dict:
    """The cluster file, validated and with defaults filled; ConfigError naming the file and key."""
    path = path or cluster_file()
    try:
        text = path.read_text()
    except OSError:
        raise ConfigError(f"{path}: cluster file not found (copy profiles/slurm/cluster.yaml, or unset {CLUSTER_ENV})") from None
    try:
        cluster = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    with open(SCHEMA_PATH) as f:
        return amvl_config.validate(cluster, prefix=str(path), schema=yaml.safe_load(f))


def _executor(workflow) -> str:
    plugin = workflow.executor_plugin
    return plugin.name.removeprefix("snakemake-executor-plugin-") if plugin is not None else "local"


def on_slurm(workflow) -> bool:
    """Whether this Snakemake submits its jobs to SLURM, or is one of those jobs."""
    return _executor(workflow) in ("slurm", "slurm-jobstep")


def submits_to_slurm(workflow) -> bool:
    """Whether this Snakemake is the one that submits the jobs (not a job itself)."""
    return _executor(workflow) == "slurm"


def job_resources(cluster: dict, stage: str, processes: int = 0, threads: int = 0, nodes: int = 1) -> dict:
    """The Snakemake resources of one job of `stage` (train, evaluate, or other), which the SLURM
    executor turns into sbatch options. `processes` per node is its launcher's (one GPU each). A
    GPU job takes whole nodes of gpu_partition: all their CPUs and memory, a GPU per process (resource
    gpu: all of them, over every node), and nobody else's processes or ports (--exclusive). On a cluster without GPUs (gpu_node.gpus: 0)
    the processes run on CPUs, each with `threads` of them."""
    if processes and cluster["gpu_node"]["gpus"]:
        node = cluster["gpu_node"]
        asked = {"slurm_partition": cluster["gpu_partition"], "cpus_per_task": node["cpus"], "mem_mb": node["mem_mb"],
                 "gpu": processes * nodes, "slurm_extra": "'--exclusive'"}  # fmt: skip
    else:
        job = cluster["cpu_job"]
        asked = {"slurm_partition": cluster["cpu_partition"], "cpus_per_task": (threads or job["cpus"]) * max(1, processes),
                 "mem_mb": job["mem_mb"], "gpu": 0, "slurm_extra": ""}  # fmt: skip
    runtime = cluster["runtime"].get(stage, cluster["runtime"]["other"])
    return {**asked, "nodes": nodes, "runtime": runtime, "slurm_account": cluster["account"]}  # "": SLURM's default


def plan(cfg: dict, train_gpus: dict, evaluate_gpus: dict) -> dict:
    """Every job's SLURM resources, by (stage, run) and "other", from the cluster file; a run that
    needs more GPUs per node than gpu_node has stops the plan."""
    cluster = load()
    jobs = {"other": job_resources(cluster, "other")}
    for run in cfg["runs"]:
        resolved = amvl_config.resolve_run(cfg, run)
        for stage, gpus in (("train", train_gpus[run]), ("evaluate", evaluate_gpus[run])):
            if 0 < cluster["gpu_node"]["gpus"] < gpus:
                raise ConfigError(
                    f"{stage}.launcher (run {run}) starts {gpus} processes per node, one GPU each, but "
                    f"gpu_node.gpus is {cluster['gpu_node']['gpus']} in {cluster_file()}"
                )
            nodes = amvl_config.launcher_nodes(cfg, run) if stage == "train" else 1
            jobs[stage, run] = job_resources(cluster, stage, gpus, resolved[stage]["threads"], nodes)
    return jobs


def _largest_nodes(partition: str) -> dict:
    """The most CPUs, memory (MB) and nodes any node of `partition` offers, and its time limit."""
    out = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%c|%m|%D|%l"], capture_output=True, text=True).stdout
    rows = [line.split("|") for line in out.split()]
    if not rows:
        return {}
    return {"CPUs": max(int(r[0].rstrip("+")) for r in rows), "memory (MB)": max(int(r[1].rstrip("+")) for r in rows),
            "nodes": sum(int(r[2]) for r in rows), "time limit": rows[0][3]}  # fmt: skip


def describe(job: dict) -> str:
    """One line for a job that can never start: its rule, what it asks, and what its partition has."""
    rule = job["Comment"].removeprefix("rule_").replace("_wildcards_", " ")
    asked = {"CPUs": int(job.get("NumCPUs", 0)), "memory (MB)": _megabytes(job.get("MinMemoryNode", "0")),
             "nodes": int(job.get("NumNodes", "1").split("-")[0]), "time limit": job.get("TimeLimit", "")}  # fmt: skip
    has = _largest_nodes(job["Partition"])
    over = [k for k in ("CPUs", "memory (MB)", "nodes") if has and asked[k] > has[k]]
    shown = ", ".join(f"{k} {asked[k]} (largest node: {has[k]})" if k in over else f"{k} {asked[k]}" for k in over or asked)
    return (
        f"SLURM job {job['JobId']} (rule {rule}) can never start in partition {job['Partition']}: it asks {shown}; "
        f"SLURM's reason: {job['Reason']}. Set what your nodes have in {cluster_file()}"
    )


def _megabytes(value: str) -> int:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    return int(float(value[:-1]) * units[value[-1]]) if value and value[-1] in units else int(value or 0)


def never_starting(workdir: str) -> list[dict]:
    """This workflow's pending jobs (submitted from `workdir`) whose reason says they never start."""
    out = subprocess.run(["squeue", "--me", "-h", "-t", "PENDING", "-o", "%i|%r|%Z"], capture_output=True, text=True).stdout
    ids = [i for i, reason, cwd in (line.split("|") for line in out.splitlines()) if reason in NEVER_STARTS and cwd == workdir]
    jobs = []
    for job_id in ids:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
        fields = dict(word.split("=", 1) for word in shown.split() if "=" in word)
        if fields.get("Comment", "").startswith("rule_"):  # submitted by Snakemake
            jobs.append(fields)
    return jobs


def watch_pending(workdir: str, every: float = 5.0) -> threading.Thread:
    """Check this workflow's pending jobs every `every` seconds; at the first that can never start,
    print one line naming it, tell Snakemake to start nothing more (SIGTERM: it lets running jobs
    finish, then stops; SIGINT would be ignored where Snakemake was started in the background) and
    cancel the job, so the workflow ends failed instead of waiting for ever."""

    def watch():
        named = set()
        while True:
            try:
                jobs = never_starting(workdir)
            except OSError:  # no squeue here after all: nothing to watch
                return
            for job in jobs:
                if not named:
                    print(f"amvl: {describe(job)}", file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGTERM)
                named.add(job["JobId"])
                subprocess.run(["scancel", job["JobId"]], capture_output=True)
            threading.Event().wait(every)

    thread = threading.Thread(target=watch, name="amvl-slurm-watch", daemon=True)
    thread.start()
    return thread
