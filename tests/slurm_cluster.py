"""A one-node SLURM on this machine for the tests: munged, slurmctld and slurmd started from a
temporary folder (their own config, ports, sockets, state and logs), stopped when done.

Needs root (slurmd starts jobs as their users); installs Debian's `munge` and `slurm-wlm` where
they are missing. Nothing outside the folder is written, and only the processes started here
are stopped, so a SLURM already running on the machine is left alone.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from amvl.distributed import free_port

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")


def unavailable() -> str:
    """Why this machine cannot run the test cluster, or "" where it can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "SLURM needs Linux"
    if os.geteuid() != 0:
        return "starting slurmd needs root (slurm tests bring up their own one-node SLURM)"
    if not all(map(os.path.exists, DAEMONS)) and not shutil.which("apt-get"):
        return "munge and slurm-wlm are not installed, and there is no apt-get to install them"
    return ""


def install() -> None:
    """Debian's munge and slurm-wlm (about a minute), where they are missing."""
    if all(map(os.path.exists, DAEMONS)):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "munge", "slurm-wlm"]):
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=900)


class SlurmCluster:
    """`with SlurmCluster() as cluster:` a running one-node cluster; `cluster.env` is the
    environment its clients (sbatch, squeue, Snakemake) need."""

    def __init__(self, partitions=("cpu", "gpu")):
        self.partitions = partitions
        self.processes: list[subprocess.Popen] = []

    def __enter__(self):
        install()
        self.root = Path(tempfile.mkdtemp(prefix="amvl-slurm-"))
        self.root.chmod(0o755)  # munged runs as user munge and must reach its socket
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self):
        munge = self.root / "munge"
        munge.mkdir(mode=0o755)
        shutil.chown(munge, "munge", "munge")
        self.socket = munge / "munge.socket"
        self._spawn(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "-F", f"--socket={self.socket}",
                     f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/seed"])  # fmt: skip
        self._wait(lambda: self.socket.exists(), "munged")
        conf = self.root / "slurm.conf"
        conf.write_text(self.slurm_conf())
        # Snakemake's SLURM job step drops every SLURM_* variable, SLURM_CONF too, before it runs
        # `srun` inside the job; clusters keep their config in /etc/slurm, which this one leaves
        # alone. So the jobs' srun is a wrapper that names this cluster's config.
        self.bin = bin_dir = self.root / "bin"
        bin_dir.mkdir()
        (bin_dir / "srun").write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun")} "$@"\n')
        (bin_dir / "srun").chmod(0o755)
        self.env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        self._spawn(["/usr/sbin/slurmctld", "-D", "-f", str(conf)], "slurmctld")
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, "slurmctld")
        self._spawn(["/usr/sbin/slurmd", "-D", "-f", str(conf)], "slurmd")
        self._wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T").stdout, "slurmd (node idle)")

    def slurm_conf(self) -> str:
        # Eight CPUs per core, which slurmd takes on trust (config_overrides): the tests' many
        # one-CPU jobs then run side by side instead of waiting for each other's status polls.
        host, cpus = socket.gethostname(), 8 * os.cpu_count()
        memory = int(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 * 0.8)  # MB, under what slurmd finds
        lines = [
            "ClusterName=amvltest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}", "SlurmUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}", "MpiDefault=none", "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU_Memory",
            "ReturnToService=2", "MinJobAge=3600", "SlurmdParameters=config_overrides", "SchedulerParameters=sched_interval=2",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            f"StateSaveLocation={self.root}/state", f"SlurmdSpoolDir={self.root}/spool",
            f"SlurmctldPidFile={self.root}/slurmctld.pid", f"SlurmdPidFile={self.root}/slurmd.pid",
            f"SlurmctldLogFile={self.root}/slurmctld.log", f"SlurmdLogFile={self.root}/slurmd.log",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN",
        ]  # fmt: skip
        for i, name in enumerate(self.partitions):
            lines.append(f"PartitionName={name} Nodes=ALL Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def _spawn(self, command: list[str], name: str = "munged"):
        log = open(self.root / f"{name}.out", "w")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _wait(self, ready, what: str, timeout: float = 60):
        deadline = time.time() + timeout
        while not ready():
            dead = [p for p in self.processes if p.poll() is not None]
            if dead or time.time() > deadline:
                logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in self.root.glob("*.out"))
                raise RuntimeError(f"the test SLURM did not start ({what}):\n{logs}")
            time.sleep(0.2)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def jobs(self, workdir: Path) -> list[dict]:
        """Every job submitted from `workdir` that the controller still knows (MinJobAge: an hour)."""
        out = self.run("squeue", "-h", "--states=all", "-o", "%i|%T|%k|%Z|%C|%m").stdout
        fields = ("id", "state", "comment", "workdir", "cpus", "memory")
        rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines()]
        return [row for row in rows if row["workdir"] == str(workdir)]

    def __exit__(self, *exc):
        if hasattr(self, "env"):
            self.run("scancel", "--user", "root", check=False)
        for process in reversed(self.processes):  # slurmd, slurmctld, then munged: each its own session
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
