"""Progress off a terminal (plain flushed lines, as a `tee`d log sees them), and output folder modes."""

import io
import json
import os
import re
import stat
import sys

import pytest
from conftest import REPO, run_tool

from amvl import progress as progress_module
from amvl.config import STAGE_SECTIONS, validate
from amvl.io import atomic_dir
from amvl.progress import Progress, track

# e.g. "train 3/4 steps (75%) | loss 2.314 ntp 2.101 | Z gain: shuffled +0.210 zeroed +0.350 | 1.52 steps/s | elapsed 0:00:01 | eta 0:00:00"
LINE = (
    r"{name} (\d+)/{total} {unit} \(\d+%\)( \| [^|]+)* \| [\d.]+ {unit}/s"
    r" \| elapsed \d+:\d\d:\d\d \| eta (\d+:\d\d:\d\d|\?)"
)


def lines(text: str, name: str, total, unit: str) -> list[re.Match]:
    pattern = re.compile(LINE.format(name=re.escape(name), total=total, unit=unit))
    return [m for m in map(pattern.fullmatch, text.splitlines()) if m]


class Pipe(io.StringIO):
    """A non-terminal stream that records how many times it was flushed."""

    flushes = 0

    def flush(self):
        self.flushes += 1


def test_off_a_terminal_lines_come_first_then_every_interval_then_at_the_end(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    out = Pipe()
    with Progress("train", 100, "steps", every=30, stream=out) as progress:
        for step in range(1, 100):
            now[0] += 1.0  # one step a second
            progress.update(step, status=f"loss {1 / step:.3f}")
    text = out.getvalue()
    found = lines(text, "train", 100, "steps")
    assert len(found) == len(text.splitlines())  # nothing but progress lines
    assert [int(m.group(1)) for m in found] == [1, 31, 61, 91, 99]  # first, every 30 s, where it ended
    assert "train 31/100 steps (31%) | loss 0.032 | 1 steps/s | elapsed 0:00:31 | eta 0:01:09" in text
    assert out.flushes >= len(found)  # each line reaches a tee'd log at once


def test_resumed_rate_counts_only_this_process_and_disabled_prints_nothing(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    with Progress("train", 20, start=10, stream=out) as progress:
        now[0] = 5.0
        progress.update(20)
    assert out.getvalue() == "train 20/20 steps (100%) | 2 steps/s | elapsed 0:00:05 | eta 0:00:00\n"
    quiet = io.StringIO()
    with Progress("train", 20, enabled=False, stream=quiet) as progress:
        progress.update(20)
    assert quiet.getvalue() == ""


def test_no_final_line_after_an_error():
    out = io.StringIO()
    with pytest.raises(RuntimeError), Progress("train", 10, every=1e9, stream=out) as progress:
        progress.update(1)
        progress.update(2)
        raise RuntimeError
    assert [int(m.group(1)) for m in lines(out.getvalue(), "train", 10, "steps")] == [1]


def test_on_a_terminal_the_rich_bar_draws_instead():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    for _ in track([1, 2, 3], "generating", stream=out):
        pass
    assert "generating" in out.getvalue() and not lines(out.getvalue(), "generating", 3, "items")


def test_track_yields_every_item_and_ends_with_a_line():
    out = io.StringIO()
    assert list(track(["a", "b"], "generating train", "subtasks", stream=out)) == ["a", "b"]
    assert [int(m.group(1)) for m in lines(out.getvalue(), "generating train", 2, "subtasks")] == [1, 2]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_atomic_dir_gets_the_umask_not_0700(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "data" / "synthetic") as folder:
            (folder / "train.parquet").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data" / "synthetic").stat().st_mode) == mode
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["synthetic"]  # no temporary folder left


@pytest.fixture(scope="module")
def trained_by_cli(prepared_data, tmp_path_factory):
    """`amvl train` as a Snakemake rule runs it: stdout a pipe, not a terminal."""
    cfg = validate({"model": {"vocab_size": 320}, "train": {"steps": 3, "batch_size": 2, "warmup_steps": 1}})
    cfg["train"].update(log_every=1, checkpoint_every=3, threads=1)
    sections = {section: cfg[section] for section in STAGE_SECTIONS["train"]}
    run_dir = tmp_path_factory.mktemp("runs") / "amvl"
    args = ["--config-json", json.dumps(sections), "--data", str(prepared_data), "--out", str(run_dir)]
    result = run_tool([sys.executable, "-m", "amvl", "train", *args], cwd=REPO)
    return cfg, run_dir, result.stdout


def test_train_cli_prints_progress_lines_to_a_pipe(trained_by_cli):
    _, _, stdout = trained_by_cli
    found = lines(stdout, "train", 3, "steps")
    assert [int(m.group(1)) for m in found] == [1, 3], stdout  # the first step, then the end
    assert re.search(r"train 3/3 steps \(100%\) \| loss [\d.]+ ntp [\d.]+ \| .* steps/s \| .* \| eta 0:00:00", stdout)
    assert re.search(r"\| Z gain: shuffled [-+][\d.]+ zeroed [-+][\d.]+ prior [-+][\d.]+ \|", stdout)  # amvl probes Z


def test_evaluate_prints_progress_for_answers_and_diagnostics(trained_by_cli, prepared_data, tmp_path, capsys):
    from amvl.stages import convert, evaluate

    _, run_dir, _ = trained_by_cli
    convert.run({}, run_dir, tmp_path / "model")
    capsys.readouterr()
    cfg = validate({"evaluate": {"batch_size": 3, "mode": "likelihood"}})
    metrics = evaluate.run(cfg, tmp_path / "model", prepared_data, tmp_path / "results")
    stdout = capsys.readouterr().out
    questions = metrics["questions"]
    assert [int(m.group(1)) for m in lines(stdout, "evaluate (likelihood)", questions, "questions")][-1] == questions
    # The diagnostics' total, counted ahead, is exactly what they run: the last line is at 100%.
    diagnostic = re.findall(r"^diagnostics (\d+)/(\d+) batches \(100%\)", stdout, re.M)
    assert len(diagnostic) == 1 and diagnostic[0][0] == diagnostic[0][1], stdout
    assert "diagnostics" in metrics
