"""V* Bench, HR-Bench and VisualPuzzles through the commands: inspected, prepared and scored from
fixtures in their published layouts; a corrupt image or an answer outside the options stops
prepare with one line naming the file and row, and writes nothing."""

import json

import pytest
from benchmark_fixtures import write_hrbench, write_visualpuzzles, write_vstar
from conftest import run_tool

from amvl.config import validate
from amvl.data.benchmarks import BENCHMARKS
from amvl.stages import evaluate, prepare

WRITERS = {"vstar": write_vstar, "hrbench_4k": write_hrbench, "visualpuzzles": write_visualpuzzles}


@pytest.mark.parametrize("name", WRITERS)
def test_a_benchmark_is_inspected_prepared_and_scored(name, released_model, tmp_path):
    root = tmp_path / "copy"
    WRITERS[name](root, n=6)
    inspected = run_tool(["amvl", "data", "inspect", str(root)], cwd=tmp_path)
    assert f"{name} " in inspected.stdout and "total" in inspected.stdout and inspected.stderr == ""

    prepare.benchmark(name, root, tmp_path / "data")
    cfg = validate({"evaluate": {"batch_size": 4, "max_new_tokens": 4}})
    metrics = evaluate.run(cfg, released_model, tmp_path / "data", tmp_path / "results", benchmark=name)
    assert metrics["benchmark"] == name and metrics["questions"] == 6
    assert metrics["score_kind"] == BENCHMARKS[name].score
    assert metrics["score"] == metrics[f"{BENCHMARKS[name].score}_accuracy"]
    assert set(metrics["per_task"]) <= set(BENCHMARKS[name].categories or metrics["per_task"])
    assert 0 < min(metrics["chance"].values()) < 1 and "diagnostics" not in metrics
    for task in metrics["per_task"]:
        answers = json.loads((tmp_path / "results" / f"{task}.json").read_text())["val"]
        assert all(a["prediction"][0] == "(" for a in answers)
    shown = run_tool(["amvl", "data", "inspect", str(root), "--show-prompt", "1"], cwd=tmp_path).stdout
    assert "<|im_start|>assistant" in shown and "<|image_pad|>×" in shown


@pytest.mark.parametrize("name", WRITERS)
@pytest.mark.parametrize("problem", ["corrupt_row", "bad_answer_row"])
def test_a_bad_question_is_named_by_file_and_row_without_a_traceback(name, problem, tmp_path):
    root = tmp_path / "copy"
    source = WRITERS[name](root, n=4, **{problem: 2})
    source = source if source.is_file() else root
    inspected = run_tool(["amvl", "data", "inspect", str(root)], cwd=tmp_path, check=False)
    assert inspected.returncode == 1 and "row 3" in inspected.stderr and str(root) in inspected.stderr

    out = tmp_path / "data"
    prepared = run_tool(["amvl", "prepare", "--benchmark", name, "--root", str(root), "--out", str(out)],
                        cwd=tmp_path, check=False)  # fmt: skip
    assert prepared.returncode == 2 and "Traceback" not in prepared.stderr
    line = prepared.stderr.strip().splitlines()[-1]
    assert line.startswith(f"amvl prepare: error: {root}") and "row 3" in line
    assert ("decode" in line) if problem == "corrupt_row" else ("answer" in line)
    assert not out.exists()  # nothing half-written
