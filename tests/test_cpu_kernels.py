"""Kernel paths pinned by `amvl`: a training run gives the same bits whatever path the CPU would
pick natively; ATEN_CPU_CAPABILITY=default stands in for another CPU."""

import json

import pytest
import torch
from conftest import REPO, run_tool

from amvl.cpu_kernels import has_avx2

pytestmark = pytest.mark.skipif(not has_avx2(), reason="kernel pinning applies to x86-64 CPUs with AVX2")

PROBE = "from amvl import cpu_kernels; cpu_kernels.pin(); import torch; print(torch.backends.cpu.get_cpu_capability())"


def capability(monkeypatch, tmp_path, **env) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return run_tool(["python", "-c", PROBE], cwd=tmp_path).stdout.strip()


def test_pin_overrides_the_native_choice_unless_opted_out(monkeypatch, tmp_path):
    assert capability(monkeypatch, tmp_path, ATEN_CPU_CAPABILITY="default") == "AVX2"
    assert capability(monkeypatch, tmp_path, ATEN_CPU_CAPABILITY="default", AMVL_NATIVE_KERNELS="1") == "DEFAULT"


def trained_weights(monkeypatch, data, out, **env) -> dict[str, torch.Tensor]:
    """`amvl train` in a child process (kernels are chosen at import); the weights it saved."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = {"model": {"vocab_size": 320, "freeze_vision": False},
              "train": {"steps": 8, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 8}}  # fmt: skip
    run_tool(["amvl", "train", "--config-json", json.dumps(config), "--data", str(data), "--out", str(out)], cwd=REPO)
    (states,) = out.glob("checkpoints/step_0000008/mp_rank_00_model_states.pt")
    return torch.load(states, weights_only=True, map_location="cpu")["module"]


def test_training_is_bit_identical_under_another_cpus_kernels(monkeypatch, prepared_data, tmp_path):
    pinned = trained_weights(monkeypatch, prepared_data, tmp_path / "native")
    emulated = trained_weights(monkeypatch, prepared_data, tmp_path / "default", ATEN_CPU_CAPABILITY="default")
    unpinned = trained_weights(monkeypatch, prepared_data, tmp_path / "unpinned", AMVL_NATIVE_KERNELS="1")
    assert pinned.keys() == emulated.keys()
    assert all(torch.equal(pinned[name], emulated[name]) for name in pinned)
    # The check can fail: the same run under this CPU's default (unpinned) kernels differs.
    assert not all(torch.equal(pinned[name], unpinned[name]) for name in pinned)
