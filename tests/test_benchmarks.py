"""The benchmark scripts run and print what their docstrings promise (timings are not checked)."""

import re
import subprocess
import sys

from conftest import REPO, tool_env


def run_script(*args):
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()


def test_step_cost_ends_with_the_ratio_line():
    lines = run_script("benchmarks/step_cost.py", "--repeats", "1", "--batch", "2")
    assert re.fullmatch(r"amvl/ntp step-time ratio: \d+\.\d\d \(token lower bound \d+\.\d\d\)", lines[-1])


def test_gpu_throughput_runs_its_tiny_shape_on_cpu():
    lines = run_script("benchmarks/gpu_throughput.py", "--tiny", "--steps", "1", "--batch", "2")
    assert any(line.startswith("ntp: ") and "tokens/s" in line for line in lines)
    assert any(line.startswith("amvl: ") for line in lines) and lines[-1].startswith("amvl/ntp step-time ratio:")
