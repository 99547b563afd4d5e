"""The workflow on a real one-node SLURM (tests/slurm_cluster.py), through profiles/slurm as a
user runs it: the smoke DAG as sbatch jobs, jobs cancelled or killed mid-run that resume, and a
job no node can run, named instead of left pending. About 8 minutes on 2 cores."""

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_project, run_tool, tool_env
from slurm_cluster import SlurmCluster, unavailable

pytestmark = pytest.mark.slurm
SMOKE = ["--configfile", "config/smoke.yaml"]


@pytest.fixture(scope="module")
def cluster():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with SlurmCluster() as running:
        yield running


def slurm_env(cluster: SlurmCluster, project: Path) -> dict:
    """The test cluster's client settings, and a cluster file saying what its one node has."""
    sizes = {
        "cpu_partition": "cpu", "gpu_partition": "gpu",
        "gpu_node": {"cpus": 2, "mem_mb": 4000, "gpus": 0},
        "cpu_job": {"cpus": 1, "mem_mb": 1000},
        "runtime": {"train": 30, "evaluate": 30, "other": 30},
    }  # fmt: skip
    (project / "cluster.yaml").write_text(yaml.safe_dump(sizes))
    env = tool_env()
    return {**env, "SLURM_CONF": cluster.env["SLURM_CONF"], "PATH": f"{cluster.bin}{os.pathsep}{env['PATH']}",
            "AMVL_SLURM_CLUSTER": str(project / "cluster.yaml")}  # fmt: skip


def snakemake(cluster: SlurmCluster, project: Path, *args: str) -> subprocess.Popen:
    """Snakemake started with the project's SLURM profile, polling job states every few seconds
    (the profile's 40 s suits a shared cluster; here it would only slow the tests)."""
    command = ["snakemake", "--profile", "profiles/slurm", "--slurm-init-seconds-before-status-checks", "2", *args]
    return subprocess.Popen(command, cwd=project, env=slurm_env(cluster, project), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def rule_jobs(cluster: SlurmCluster, project: Path, rule: str, run: str = "") -> list[str]:
    """States of the SLURM jobs Snakemake submitted for `rule` (and run), oldest first."""
    jobs = [job for job in cluster.jobs(project) if job["comment"].startswith(f"rule_{rule}")]
    return [job["state"] for job in sorted(jobs, key=lambda job: int(job["id"])) if job["comment"].endswith(run)]


@pytest.fixture(scope="module")
def workflows(cluster, tmp_path_factory):
    """Two copies of the project, each running one workflow through SLURM at the same time: the
    smoke DAG with four more runs into which faults are injected (`inject_faults`; one workflow,
    since Snakemake polls job states the less often the longer none of its jobs has ended), and a
    training no node can run."""
    projects = {name: copy_project(tmp_path_factory.mktemp(name)) for name in ("smoke", "big")}
    commands = {"smoke": [*SMOKE, str(faults_config(projects["smoke"]))], "big": [*SMOKE, str(big_config(projects["big"]))]}
    planned = run_tool(["snakemake", "-n", "--cores", "1", *commands["smoke"]], cwd=projects["smoke"]).stdout
    faults, big = [], {}
    processes = {name: snakemake(cluster, projects[name], *args) for name, args in commands.items()}
    watchers = [threading.Thread(target=inject_faults, args=(cluster, projects["smoke"], faults), daemon=True),
                threading.Thread(target=time_to_stop, args=(cluster, projects["big"], processes["big"], big), daemon=True)]  # fmt: skip
    for watcher in watchers:
        watcher.start()
    outputs = {name: process.communicate(timeout=900)[0] for name, process in processes.items()}
    for watcher in watchers:
        watcher.join(timeout=10)
    return {
        "projects": projects, "outputs": outputs, "codes": {n: p.returncode for n, p in processes.items()},
        "planned": int(re.search(r"^total\s+(\d+)$", planned, re.M).group(1)), "faults": faults, "big": big,
    }  # fmt: skip


def test_the_smoke_dag_runs_as_sbatch_jobs(cluster, workflows):
    project, output = workflows["projects"]["smoke"], workflows["outputs"]["smoke"]
    assert workflows["codes"]["smoke"] == 0, output[-4000:]
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", output)
    # every job but the local target rule `all`, and the four that faults made Snakemake retry
    assert len(set(submitted)) == workflows["planned"] - 1 + len(workflows["faults"])
    asked = {(job["cpus"], job["memory"]) for job in cluster.jobs(project)}
    assert asked == {("1", "1000M")}, asked  # the test cluster file's cpu_job, and train.threads: 1
    metrics = json.loads((project / "results/smoke/amvl/metrics.json").read_text())
    assert 0 <= metrics["macro_accuracy"] <= 1
    assert (project / "reports/smoke/report.md").exists()


def faults_config(project: Path) -> Path:
    """Four more runs of the smoke config, identical amvl trainings long enough to checkpoint four
    times: one left alone, one scancelled, one whose processes are SIGKILLed (a lost node), and one
    started through the multi-node launcher (`srun --nodes 1 torchrun`)."""
    amvl = {"objective": {"name": "amvl"}, "train": {"steps": 12, "checkpoint_every": 3, "log_every": 3},
            "evaluate": {"limit": 2, "diagnostics": False}}  # fmt: skip
    launched = {**amvl, "train": {**amvl["train"], "launcher": "srun --nodes 1 torchrun --nproc_per_node 1"}}
    path = project / "faults.yaml"
    path.write_text(yaml.safe_dump({"runs": {"alone": amvl, "cancelled": amvl, "killed": amvl, "launched": launched}}))
    return path


def big_config(project: Path) -> Path:
    """One training asking 64 CPUs (train.threads) of the test node's fewer."""
    path = project / "big.yaml"
    runs = {run: None for run in yaml.safe_load((REPO / "config/smoke.yaml").read_text())["runs"]}  # null: dropped
    path.write_text(yaml.safe_dump({"experiment": "big", "runs": {**runs, "big": {"train": {"threads": 64}}}}))
    return path


def when(condition, timeout: float = 600) -> bool:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.3)
    return True


def checkpointed(project: Path, run: str) -> bool:
    latest = project / f"runs/smoke/{run}/checkpoints/latest"
    return latest.exists() and 3 <= int(latest.read_text().removeprefix("step_")) < 12


def running_job(cluster: SlurmCluster, project: Path, rule: str, run: str) -> str | None:
    jobs = [job for job in cluster.jobs(project) if job["comment"] == f"rule_{rule}_wildcards_{run}"]
    return next((job["id"] for job in jobs if job["state"] == "RUNNING"), None)


def kill_processes_of(project: Path, run: str) -> int:
    """SIGKILL every process working on `run` (the job's Snakemake, shell and training), as a
    node that dies takes them all; returns how many."""
    killed = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            words = (proc / "cmdline").read_bytes().split(b"\0")
            if any(f"runs/smoke/{run}".encode() in word for word in words) and os.readlink(proc / "cwd") == str(project):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
        except (OSError, ValueError):
            continue
    return killed


def inject_faults(cluster: SlurmCluster, project: Path, faults: list) -> None:
    """scancel run `cancelled`'s training after its first checkpoint, SIGKILL run `killed`'s, then
    scancel a conversion and an evaluation while they run; `faults` lists what was done."""
    job = lambda rule, run: running_job(cluster, project, rule, run)  # noqa: E731
    if when(lambda: checkpointed(project, "cancelled") and job("train", "cancelled")):
        faults.append(("scancel train", cluster.run("scancel", job("train", "cancelled")).returncode))
    if when(lambda: checkpointed(project, "killed")):
        faults.append(("SIGKILL train", kill_processes_of(project, "killed") > 0))
    if when(lambda: job("convert", "cancelled")):
        faults.append(("scancel convert", cluster.run("scancel", job("convert", "cancelled")).returncode))
    if when(lambda: job("evaluate", "killed")):
        faults.append(("scancel evaluate", cluster.run("scancel", job("evaluate", "killed")).returncode))


def time_to_stop(cluster: SlurmCluster, project: Path, process, big: dict) -> None:
    """Seconds from the training's first sight in squeue, pending, to the workflow's end."""
    pending = lambda: any(job["comment"].startswith("rule_train") for job in cluster.jobs(project))  # noqa: E731
    if when(lambda: process.poll() is not None or pending()):
        seen = time.time()
        when(lambda: process.poll() is not None)
        big["seconds"] = time.time() - seen


def test_cancelled_and_killed_jobs_resume_to_the_same_weights(cluster, workflows):
    """scancel a training, SIGKILL another's processes, scancel a conversion and an evaluation:
    Snakemake's retries resume each training from its last checkpoint, and every run ends with
    the weights and answers of the run left alone; the srun+torchrun launcher gives them too."""
    project, output = workflows["projects"]["smoke"], workflows["outputs"]["smoke"]
    assert workflows["codes"]["smoke"] == 0, output[-4000:]
    assert workflows["faults"] == [("scancel train", 0), ("SIGKILL train", True), ("scancel convert", 0), ("scancel evaluate", 0)]
    assert rule_jobs(cluster, project, "train", "cancelled") == ["CANCELLED", "COMPLETED"]
    assert rule_jobs(cluster, project, "train", "killed") == ["FAILED", "COMPLETED"]
    assert rule_jobs(cluster, project, "convert", "cancelled") == ["CANCELLED", "COMPLETED"]
    assert rule_jobs(cluster, project, "evaluate", "killed") == ["CANCELLED", "COMPLETED"]
    for run in ("cancelled", "killed"):  # resumed from a checkpoint, not restarted
        assert re.search(r"\(step (3|6|9)\)", (project / f"logs/smoke/train/{run}.log").read_text()), run
    runs = ("alone", "cancelled", "killed", "launched")
    weights = {run: (project / f"models/smoke/{run}/model.safetensors").read_bytes() for run in runs}
    assert [run for run in runs if weights[run] != weights["alone"]] == []
    answers = {run: json.loads((project / f"results/smoke/{run}/metrics.json").read_text())["per_task"] for run in runs}
    assert [run for run in runs if answers[run] != answers["alone"]] == []
    assert "srun --nodes 1 --overlap" in output  # the launched run went through srun and torchrun


def test_a_job_no_node_can_run_is_named_within_a_minute(cluster, workflows):
    """A training asking 64 CPUs would pend for ever (PartitionConfig): the workflow names it in
    one line, cancels it and stops (by SIGTERM, which works where Snakemake ignores SIGINT, as
    when started in the background)."""
    project, output = workflows["projects"]["big"], workflows["outputs"]["big"]
    assert workflows["codes"]["big"] != 0
    lines = [line for line in output.splitlines() if line.startswith("amvl: ")]
    pattern = r"rule train big\) can never start in partition cpu: it asks CPUs 64 \(largest node: \d+\)"
    assert len(lines) == 1 and re.search(pattern, lines[0]), output[-3000:]
    assert workflows["big"]["seconds"] < 60
    assert all(job["state"] != "PENDING" for job in cluster.jobs(project))
