"""Two nodes without a second machine: two torchrun launchers on this one, one process each,
meeting over 127.0.0.1, train as one node of two processes does, resume after both are killed,
and give a run that `amvl convert` turns into a model folder.

On two nodes every process has LOCAL_RANK 0 and only RANK tells them apart; whatever is keyed
on the wrong one shows here: both nodes would write train_log.jsonl (lines twice), draw the same
batches (other losses), or race on the skeleton and the checkpoints. DeepSpeed's
`use_node_local_storage` is off (its default): every rank writes its own ZeRO shard into the one
checkpoint folder, which on real nodes must be a shared filesystem; here both "nodes" share the disk.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import BIN, REPO, tool_env

from amvl.config import stage_config, validate
from amvl.distributed import free_port, load_fp32_state_dict
from amvl.model.latent import LatentReasoner
from amvl.stages import prepare

pytestmark = pytest.mark.multinode

STEPS = 6
TIMEOUT = 240  # seconds any launch may take before the test fails it (a hung rendezvous, a hang in a collective)
CONFIG = {
    "data": {"train_size": 8, "val_size": 4},
    "model": {"vocab_size": 320},
    "train": {"steps": STEPS, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "threads": 1},
}

# `python HOLD train ...` is `python -m amvl train ...`, except that rank AMVL_HOLD_RANK, asked to
# save the checkpoint of step AMVL_HOLD_STEP, says so in the file AMVL_HOLD_FILE and stops there
# until it is killed: the other rank logs that step and then waits for it in the checkpoint's
# barrier. The kill then always lands after the first checkpoint and before the run ends.
HOLD = """
from amvl import cpu_kernels

cpu_kernels.pin()  # before torch is imported, as `amvl` does it: the same kernels as an unheld run
import os, sys, time
from pathlib import Path

from amvl import cli
from amvl.stages import train

save = train.save_checkpoint


def save_or_hold(engine, checkpoint_dir, step, keep, rank=0):
    if rank == int(os.environ["AMVL_HOLD_RANK"]) and step == int(os.environ["AMVL_HOLD_STEP"]):
        Path(os.environ["AMVL_HOLD_FILE"]).write_text(str(step))
        time.sleep(3600)
    return save(engine, checkpoint_dir, step, keep, rank)


train.save_checkpoint = save_or_hold
sys.exit(cli.main())
"""


def child_env(**extra) -> dict:
    """tool_env() (no rank variables of this process), with gloo on the loopback interface: both
    "nodes" are this machine, and gloo would otherwise take the address the hostname resolves to,
    which need not be reachable (on real nodes, set it to the interconnect's interface or leave it unset)."""
    return {**tool_env(), "GLOO_SOCKET_IFNAME": "lo", **extra}


def train_args(cfg: dict, data: Path, run_dir: Path) -> list[str]:
    """What the train rule passes after `{amvl}`."""
    config = json.dumps(stage_config(cfg, "train"))
    return ["train", "--config-json", config, "--data", str(data), "--out", str(run_dir), "--threads", "1"]


def rendezvous(kind: str, node: int, port: int) -> list[str]:
    """torchrun's options for node `node` of two. static: numbered by hand, node 0 hosts the
    store at --master_addr:--master_port. c10d: what a multi-node SLURM job's `srun torchrun`
    uses, one store at --rdzv-endpoint (here both launchers try to host it; the second becomes a
    client) and the nodes numbered as they join, so which launcher gets rank 0 is not fixed."""
    if kind == "static":
        return ["--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port)]
    return ["--rdzv-backend", "c10d", "--rdzv-id", f"test-{port}", "--rdzv-endpoint", f"127.0.0.1:{port}"]


def two_nodes(cfg, data, run_dir, logs: Path, kind: str, script=None, env=None) -> list[subprocess.Popen]:
    """One launcher per "node", each in a process group of its own (as on two machines)."""
    port, procs = free_port(), []
    for node in (0, 1):
        launcher = [str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", *rendezvous(kind, node, port)]
        program = [script] if script else ["--module", "amvl"]
        with open(logs / f"node{node}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [*launcher, *program, *train_args(cfg, data, run_dir)], cwd=REPO, env=env or child_env(),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            )
    return procs


def kill_node(launcher: subprocess.Popen) -> None:
    """SIGKILL a node: its launcher's process group, and its workers' (torchrun starts each
    worker in a session of its own, so killing the launcher's group alone would orphan them)."""
    try:
        workers = psutil.Process(launcher.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    for pid in [launcher.pid, *(w.pid for w in workers)]:
        try:
            os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launcher.wait(timeout=30)


def tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}:\n{p.read_text()[-2500:]}" for p in sorted(logs.glob("*.log")))


def wait_nodes(procs: list[subprocess.Popen], logs: Path, timeout: float = TIMEOUT) -> None:
    """Every launcher exits 0 within `timeout`; otherwise (one failed, so the other would wait for it
    in the rendezvous or a collective, or one hangs) all are killed and the test fails with their logs."""
    deadline = time.time() + timeout
    while any(proc.poll() is None for proc in procs):
        failed = any(proc.poll() for proc in procs)
        if failed or time.time() > deadline:
            for proc in procs:
                kill_node(proc)
            why = "a launcher failed" if failed else f"launchers still running after {timeout} s"
            raise AssertionError(f"{why} (exit codes {[p.returncode for p in procs]}):\n{tails(logs)}")
        time.sleep(0.1)
    codes = [proc.returncode for proc in procs]
    assert not any(codes), f"launchers exited {codes}:\n{tails(logs)}"


def one_node(cfg, data, run_dir, logs: Path) -> None:
    """Two processes under one launcher: the run the two nodes must reproduce."""
    launcher = [str(BIN / "torchrun"), "--nnodes", "1", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]  # fmt: skip
    with open(logs / "one_node.log", "w") as log:
        proc = subprocess.Popen(
            [*launcher, "--module", "amvl", *train_args(cfg, data, run_dir)], cwd=REPO, env=child_env(),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    wait_nodes([proc], logs)


def records(run_dir: Path) -> list[dict]:
    """train_log.jsonl, less its one timing-dependent field."""
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]


def weights(run_dir: Path, tag: str = f"step_{STEPS:07d}") -> dict[str, torch.Tensor]:
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return load_fp32_state_dict(run_dir / "checkpoints", tag, summary["zero_stage"])


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    cfg = validate(json.loads(json.dumps(CONFIG)))
    prepare.run(cfg, root / "data")
    return cfg, root


@pytest.fixture(scope="module")
def uninterrupted(setup):
    """Two nodes (static rendezvous), trained start to end."""
    cfg, root = setup
    run_dir, logs = root / "two_nodes", root / "logs_two_nodes"
    logs.mkdir()
    wait_nodes(two_nodes(cfg, root / "data", run_dir, logs, "static"), logs)
    return run_dir, logs


@pytest.fixture(scope="module")
def resumed(setup):
    """Two nodes (c10d rendezvous) killed after the first checkpoint, then both started again."""
    cfg, root = setup
    run_dir, logs, hold = root / "resumed", root / "logs_killed", root / "hold.py"
    logs.mkdir()
    hold.write_text(HOLD)
    held = root / "held"
    env = child_env(AMVL_HOLD_RANK="1", AMVL_HOLD_STEP="4", AMVL_HOLD_FILE=str(held))
    procs = two_nodes(cfg, root / "data", run_dir, logs, "c10d", script=str(hold), env=env)
    try:
        deadline = time.time() + TIMEOUT
        log, latest = run_dir / "train_log.jsonl", run_dir / "checkpoints" / "latest"
        # Rank 1 holds before checkpoint 4; rank 0 has logged step 4 and waits for it in the checkpoint's barrier.
        while not (held.exists() and latest.exists() and log.exists() and len(log.read_text().splitlines()) == 4):
            assert all(p.poll() is None for p in procs), f"a launcher exited before the kill:\n{tails(logs)}"
            assert time.time() < deadline, f"no checkpoint after {TIMEOUT} s:\n{tails(logs)}"
            time.sleep(0.05)
    finally:
        for proc in procs:
            kill_node(proc)
    at_kill = {
        "latest": (run_dir / "checkpoints" / "latest").read_text(),
        "checkpoints": sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")),
        "steps": [r["step"] for r in records(run_dir)],
        "summary": (run_dir / "train_summary.json").exists(),
    }
    restart = root / "logs_resumed"
    restart.mkdir()
    wait_nodes(two_nodes(cfg, root / "data", run_dir, restart, "c10d"), restart)
    return run_dir, at_kill, restart


def test_two_nodes_train_as_one_node_of_two_processes(setup, uninterrupted):
    cfg, root = setup
    run_dir, logs = uninterrupted
    one = root / "one_node"
    (root / "logs_one_node").mkdir()
    one_node(cfg, root / "data", one, root / "logs_one_node")

    # Same batches, noise and reductions: every logged term of every step, and the final weights, bit for bit.
    assert [r["step"] for r in records(run_dir)] == list(range(1, STEPS + 1))  # one writer: no line twice
    assert records(run_dir) == records(one)
    assert_same_weights(weights(run_dir), weights(one))

    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tag"] == f"step_{STEPS:07d}" and summary["final"]["step"] == STEPS
    # Pruned by rank 0 alone to keep_checkpoints (2); each holds both ranks' ZeRO shards.
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_0000004", "step_0000006"]
    for tag in ("step_0000004", "step_0000006"):
        assert sorted(p.name for p in (checkpoints / tag).iterdir()) == [
            "mp_rank_00_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ]
    assert json.loads((checkpoints / "run_identity.json").read_text())["world_size"] == 2
    # No temporary file or folder left behind by two writers of the same path (write_text's
    # .<name>.tmp, atomic_dir's .<name>.<id>), and the skeleton complete.
    assert not [p for p in run_dir.rglob(".*")], list(run_dir.rglob(".*"))
    skeleton = {p.name for p in (run_dir / "skeleton").iterdir()}
    assert {"tokenizer.json", "preprocessor_config.json", "config.json", "amvl_config.json"} <= skeleton
    # Only global rank 0 (node 0) reports progress; node 1, LOCAL_RANK 0 too, stays quiet.
    assert f"train {STEPS}/{STEPS} steps" in (logs / "node0.log").read_text()
    assert f"/{STEPS} steps" not in (logs / "node1.log").read_text()


def test_two_nodes_resume_after_both_are_killed(uninterrupted, resumed):
    run_dir, at_kill, restart = resumed
    # Killed after checkpoint 2 was written, with steps 3-4 logged but not checkpointed.
    assert at_kill["latest"] == "step_0000002" and at_kill["checkpoints"] == ["step_0000002"]
    assert at_kill["steps"] == [1, 2, 3, 4] and not at_kill["summary"]
    # Resumed, not restarted; said once, by global rank 0 (whichever launcher c10d made node 0).
    said = [log.read_text().count("resuming from") for log in sorted(restart.glob("node*.log"))]
    assert sorted(said) == [0, 1] and "(step 2)" in "".join(log.read_text() for log in restart.glob("node*.log"))
    assert [r["step"] for r in records(run_dir)] == list(range(1, STEPS + 1))  # steps 3-4 replaced, not duplicated
    assert records(run_dir) == records(uninterrupted[0])
    assert_same_weights(weights(run_dir), weights(uninterrupted[0]))
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_0000004", "step_0000006"]


def test_convert_the_resumed_two_node_run(setup, uninterrupted, resumed):
    cfg, root = setup
    run_dir, model_dir = resumed[0], root / "models" / "resumed"
    result = subprocess.run(  # the convert rule's command line
        [str(BIN / "amvl"), "convert", "--config-json", json.dumps(stage_config(cfg, "convert")),
         "--run-dir", str(run_dir), "--out", str(model_dir)],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = {p.name for p in model_dir.iterdir()}
    assert {"model.safetensors", "latent_modules.safetensors", "config.json", "tokenizer.json"} <= files
    # The model folder holds the uninterrupted run's final weights, every one of them.
    loaded = LatentReasoner.load(model_dir).state_dict()
    trained = weights(uninterrupted[0])
    different = [name for name, tensor in trained.items() if not torch.equal(loaded[name], tensor)]
    assert not different, different[:3]


def test_evaluation_takes_its_nodes_gpu_local_rank_not_rank(monkeypatch):
    """Node 1 of two with two GPUs each: RANK 3 is GPU 1 of its node. Without set_device every
    process of a node would gather (NCCL's gather_object) and answer (`evaluate.device: cuda`) on GPU 0."""
    from amvl.stages import evaluate

    calls = []
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append(("init", backend)))
    assert evaluate.rank_and_world() == (3, 4)  # batches dealt by the global rank
    assert calls == [("set_device", 1), ("init", "nccl")]
