"""The benchmark scripts run and print what their docstrings promise (timings are not checked)."""

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO, tool_env


def run_script(*args):
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()


def test_step_cost_ends_with_the_ratio_line():
    lines = run_script("benchmarks/step_cost.py", "--repeats", "1", "--batch", "2")
    assert re.fullmatch(r"amvl/ntp step-time ratio: \d+\.\d\d \(token lower bound \d+\.\d\d\)", lines[-1])


def test_science_step_cost_times_every_method_of_the_grid():
    lines = run_script("benchmarks/science_step_cost.py", "--repeats", "1")
    assert [line.split(":")[0].strip() for line in lines[:-1]] == [
        "cot", "ntp", "ntp_pause", "latent_det", "elbo", "fwd", "amvl", "amvl_ra"
    ]  # fmt: skip
    assert re.fullmatch(r"largest ratio to ntp of a method with latents .*: \d+\.\d\d", lines[-1])


def test_z_probe_cost_times_every_latent_method_with_and_without_the_probe():
    lines = run_script("benchmarks/z_probe_cost.py", "--repeats", "1")
    assert [line.split(":")[0].strip() for line in lines[:-1]] == [
        "science latent_det", "science elbo", "science fwd", "science amvl", "science amvl_ra",
        "default elbo", "default fwd", "default rev", "default amvl",
    ]  # fmt: skip
    assert re.fullmatch(r"largest overhead of the probe every 10 steps: -?\d+\.\d% of training time", lines[-1])


@pytest.mark.slow  # about 40 s: kept out of the default run
def test_data_scale_ends_with_the_two_ratio_lines():
    lines = run_script("benchmarks/data_scale.py", "--sizes", "6", "12", "--steps", "2", "--batch", "2", "--repeats", "1")
    assert re.fullmatch(r"peak RSS ratio \(large/small\): \d+\.\d\d", lines[-2])
    assert re.fullmatch(r"time to first step ratio \(large/small\): \d+\.\d\d", lines[-1])
    assert lines[0].startswith("N=6: train.parquet") and lines[1].startswith("N=12: train.parquet")


def test_gpu_throughput_runs_its_tiny_shape_on_cpu():
    lines = run_script("benchmarks/gpu_throughput.py", "--tiny", "--steps", "1", "--batch", "2")
    assert any(line.startswith("ntp: ") and "tokens/s" in line for line in lines)
    assert any(line.startswith("amvl: ") for line in lines) and lines[-1].startswith("amvl/ntp step-time ratio:")


def test_gpu_check_writes_its_json_on_cpu_in_a_tiny_shape(tmp_path):
    out = tmp_path / "check.json"
    run_script("benchmarks/gpu_check.py", "--tiny", "--out", str(out), "--steps", "1", "--eval-questions", "2")
    report = json.loads(out.read_text())
    pipeline = report["pipeline"]  # the real stages: where they put the model
    assert pipeline["train_device"] == pipeline["evaluate_device"] == "cpu" and pipeline["evaluate_dtype"] == "bfloat16"
    assert pipeline["diagnostics"] and report["model"]["layers"] == report["model"]["of_layers"] == 2
    train = report["train"]
    assert train["zero_stage"] == 2 and train["precision"] == "bf16" and train["gradient_checkpointing"]
    assert train["ntp"]["tokens_per_s"] > 0 and train["amvl"]["tokens_per_s"] > 0 and train["amvl_ntp_step_ratio"] > 0
    assert report["evaluate"]["questions"] == 2 and report["evaluate"]["questions_per_s"] > 0
