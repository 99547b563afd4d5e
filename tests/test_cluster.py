"""What each job asks of a SLURM cluster (amvl/cluster.py, profiles/slurm), without a cluster;
tests/test_slurm.py submits them to a real one."""

import pytest
import yaml

from amvl import cluster, config
from amvl.errors import ConfigError
from conftest import REPO


def real_scale() -> dict:
    return config.load(REPO / "config" / "real_scale.yaml")


def test_the_shipped_cluster_file_gives_each_gpu_training_whole_nodes(monkeypatch):
    monkeypatch.delenv(cluster.CLUSTER_ENV, raising=False)
    cfg = real_scale()
    train_gpus = {run: config.train_gpus(cfg, run) for run in cfg["runs"]}
    jobs = cluster.plan(cfg, train_gpus, {run: config.evaluate_gpus(cfg, run) for run in cfg["runs"]})
    trained = [run for run in cfg["runs"] if train_gpus[run]]
    assert trained == ["amvl", "ntp"]
    for run in trained:
        assert jobs["train", run] == {
            "slurm_partition": "gpu", "cpus_per_task": 64, "mem_mb": 900000, "gpu": 8, "slurm_extra": "'--exclusive'",
            "nodes": 1, "runtime": 2880, "slurm_account": "",
        }  # fmt: skip
        assert jobs["evaluate", run]["gpu"] == 8 and jobs["evaluate", run]["runtime"] == 240
    assert jobs["other"] == {"slurm_partition": "", "cpus_per_task": 4, "mem_mb": 200000, "gpu": 0, "slurm_extra": "",
                             "nodes": 1, "runtime": 120, "slurm_account": ""}  # fmt: skip
    assert set(jobs["other"]) - {"cpus_per_task"} == set(cluster.UNSET)  # what every rule declares


def test_the_profile_body_holds_nothing_about_a_cluster():
    """Partitions, account and sizes live in cluster.yaml; the profile only says how to submit."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert not {"default-resources", "set-resources", "set-threads"} & set(profile)


@pytest.mark.parametrize(
    "text, message",
    [
        ("gpu_node: {cpus: 64, gpu: 8}\n", r"cluster.yaml.gpu_node.gpu: unknown key \(allowed: cpus, gpus, mem_mb\)"),
        ("cpu_job: {mem_mb: lots}\n", r"cluster.yaml.cpu_job.mem_mb: 'lots' is not of type 'integer'"),
        ("partition: gpu\n", r"cluster.yaml.partition: unknown key"),
        ("[a\n", r"cluster.yaml: not valid YAML"),
    ],
)
def test_a_bad_cluster_file_is_named_with_its_key(tmp_path, monkeypatch, text, message):
    (tmp_path / "cluster.yaml").write_text(text)
    monkeypatch.setenv(cluster.CLUSTER_ENV, str(tmp_path / "cluster.yaml"))
    with pytest.raises(ConfigError, match=message):
        cluster.load()


def test_a_missing_cluster_file_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(cluster.CLUSTER_ENV, str(tmp_path / "mine.yaml"))
    with pytest.raises(ConfigError, match=r"mine.yaml: cluster file not found \(copy profiles/slurm/cluster.yaml"):
        cluster.load()


def test_more_gpus_per_node_than_the_nodes_have_stops_the_plan(tmp_path, monkeypatch):
    (tmp_path / "cluster.yaml").write_text("gpu_node: {gpus: 4}\n")
    monkeypatch.setenv(cluster.CLUSTER_ENV, str(tmp_path / "cluster.yaml"))
    cfg = real_scale()
    with pytest.raises(ConfigError, match=r"^train.launcher \(run amvl\) starts 8 processes per node, one GPU each, but gpu_node.gpus is 4"):
        cluster.plan(cfg, {run: config.train_gpus(cfg, run) for run in cfg["runs"]}, {run: 0 for run in cfg["runs"]})


def test_a_cluster_without_gpus_runs_launcher_processes_on_cpus(tmp_path, monkeypatch):
    (tmp_path / "cluster.yaml").write_text("cpu_partition: cpu\ngpu_node: {gpus: 0}\ncpu_job: {cpus: 2, mem_mb: 1000}\n")
    monkeypatch.setenv(cluster.CLUSTER_ENV, str(tmp_path / "cluster.yaml"))
    job = cluster.job_resources(cluster.load(), "train", processes=3, threads=0)
    assert (job["slurm_partition"], job["cpus_per_task"], job["gpu"], job["slurm_extra"]) == ("cpu", 6, 0, "")


def test_srun_starts_one_torchrun_per_node_meeting_at_the_first():
    cfg = config.validate({"train": {"launcher": "srun --nodes 2 torchrun --nproc_per_node 8"}, "runs": {"a": {}}})
    assert config.launcher_nodes(cfg, "a") == 2 and config.train_gpus(cfg, "a") == 8
    command = config.launch_command(cfg, "a")
    port = config.rendezvous_port(cfg, "a")
    assert command == (
        'srun --nodes 2 --overlap --ntasks-per-node 1 --cpus-per-task "$SLURM_CPUS_ON_NODE" torchrun --nproc_per_node 8'
        ' --nnodes 2 --rdzv-backend c10d --rdzv-id "$SLURM_JOB_ID"'
        f' --rdzv-endpoint "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)":{port} --module amvl'
    )


@pytest.mark.parametrize(
    "launcher, message",
    [
        ("srun --nodes 2 deepspeed --num_gpus 8", r"srun must start torchrun"),
        ("srun --nodes two torchrun --nproc_per_node 8", r"srun --nodes must be a whole number of nodes, got 'two'"),
    ],
)
def test_a_bad_srun_launcher_is_one_line(launcher, message):
    cfg = config.validate({"train": {"launcher": launcher}, "runs": {"a": {}}})
    with pytest.raises(ConfigError, match=message):
        config.launch_command(cfg, "a")
