import subprocess
import sys

import pytest
from conftest import REPO, tool_env

STAGES = ["prepare", "train", "convert", "evaluate", "report"]


def amvl(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "amvl", *args], cwd=cwd, env=tool_env(), capture_output=True, text=True
    )


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage):
    result = amvl(stage, "--help")
    assert result.returncode == 0 and "--config" in result.stdout and "--out" in result.stdout


def test_console_script_is_installed():
    from conftest import BIN

    result = subprocess.run([str(BIN / "amvl"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and all(stage in result.stdout for stage in STAGES)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train:\n  lrr: 1\n", "train.lrr: unknown key"),
        ("train:\n  lr: fast\n", "train.lr: 'fast' is not of type 'number'"),
    ],
)
def test_bad_config_stops_with_one_line_naming_the_key(tmp_path, override, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(override)
    result = amvl(
        "prepare", "--config", str(REPO / "config" / "config.yaml"), "--config", str(bad), "--out", str(tmp_path / "d")
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and key in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_corrupt_data_stops_with_one_line_naming_the_file(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    result = amvl(
        "train",
        "--config",
        str(REPO / "config" / "config.yaml"),
        "--run",
        "amvl",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 2 and "train.parquet: not a readable parquet file" in result.stderr
    assert "Traceback" not in result.stderr
