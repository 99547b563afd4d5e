"""Models evaluated as they are: a Hugging Face Qwen2.5-VL folder, its own chat template, its
end tokens, zero-shot runs through real Snakemake, and evaluation split over two processes."""

import json

import pytest
import yaml
from benchmark_fixtures import write_vstar
from conftest import copy_project, run_tool

from amvl.config import validate
from amvl.data.blink import read_split
from amvl.data.collate import collate, encode
from amvl.data.inspect import show_prompts
from amvl.model.backbone import IMAGE_PAD, load_processors
from amvl.model.latent import LatentReasoner


@pytest.fixture(scope="module")
def released(released_model):
    return released_model


def test_prompt_is_the_tokenizers_chat_template(released, prepared_data):
    tokenizer, image_processor = load_processors(released)
    row = read_split(prepared_data / "val.parquet")[0]
    example = encode(row, tokenizer, image_processor)
    images = [{"type": "image"}] * len(row["images"])
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": [*images, {"type": "text", "text": row["prompt"]}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    pads = [int(g.prod()) // 4 for g in example.image_grid_thw]
    for count in pads:  # the processor's expansion: one <|image_pad|> per merged patch, image by image
        expected = expected.replace(f"<|vision_start|>{IMAGE_PAD}<", f"<|vision_start|>{IMAGE_PAD * count}\0<", 1)
    expected = expected.replace("\0", "")
    assert "You answer BLINK questions." in expected
    assert tokenizer.decode(example.prompt_ids) == expected


def test_show_prompt_prints_the_template_with_image_token_counts(released, prepared_data):
    text = show_prompts(prepared_data / "val.parquet", 1, released, instruction="\nAnswer with a letter.")
    assert "You answer BLINK questions." in text and f"{IMAGE_PAD}×9" in text
    assert text.count("----- val") == len(validate({})["data"]["subtasks"])
    assert "Answer with a letter.<|im_end|>\n<|im_start|>assistant\n" in text
    default = show_prompts(prepared_data / "val.parquet", 1)  # the released Qwen2.5-VL's format
    assert "You are a helpful assistant." in default


def test_plain_folder_loads_without_slots_and_stops_at_every_end_token(released, prepared_data):
    model = LatentReasoner.load(released).eval()
    assert model.cfg.slot_kind == "none" and model.cfg.answer_format == "letter"
    tokenizer, image_processor = load_processors(released)
    batch = collate([encode(r, tokenizer, image_processor) for r in read_split(prepared_data / "val.parquet")[:2]])
    first = model.generate(batch, max_new_tokens=3)
    assert all(len(answer) == 3 for answer in first)  # untrained: it never says <|im_end|>
    # the generation config's end tokens end answers too (the released model's <|endoftext|>)
    model.backbone.generation_config.eos_token_id = [model.cfg.eos_id, first[0][1]]
    again = model.generate(batch, max_new_tokens=3)
    assert again[0] == first[0][:1]


def test_zero_shot_run_and_a_benchmark_through_snakemake(released, tmp_path):
    (tmp_path / "project").mkdir()
    project = copy_project(tmp_path / "project")
    write_vstar(tmp_path / "vstar", n=4)
    config = yaml.safe_load((project / "config/smoke.yaml").read_text())
    config.update(
        experiment="zero_shot",
        model={"backbone": "pretrained", "pretrained_path": str(released)},
        benchmarks={"vstar": str(tmp_path / "vstar")},
        runs={"base": {"objective": {"name": "none"}}},
    )
    (project / "config/zero_shot.yaml").write_text(yaml.safe_dump(config))
    run_tool(["snakemake", "--cores", "2", "--configfile", "config/zero_shot.yaml"], cwd=project)

    assert not (project / "models").exists() and not (project / "runs").exists()  # nothing trained or copied
    metrics = json.loads((project / "results/zero_shot/base/metrics.json").read_text())
    assert metrics["model"] == {"path": str(released), "zero_shot": True}
    vstar = json.loads((project / "results/zero_shot/base/vstar/metrics.json").read_text())
    assert vstar["benchmark"] == "vstar" and vstar["questions"] == 4 and 0 <= vstar["score"] <= 1
    report = (project / "reports/zero_shot/report.md").read_text()
    assert f"base (zero-shot {released.name})" in report
    assert "V* Bench" in report and "(paper, quoted)" in report


def test_two_processes_answer_as_one(released, prepared_data, tmp_path):
    """evaluate under torchrun with 2 CPU processes writes exactly what one process writes."""
    cfg = json.dumps({"evaluate": {"batch_size": 3, "max_new_tokens": 4, "threads": 1}})
    common = ["evaluate", "--config-json", cfg, "--model", str(released), "--data", str(prepared_data)]
    run_tool(["amvl", *common, "--out", str(tmp_path / "one")], cwd=tmp_path)
    torchrun = ["torchrun", "--standalone", "--nproc_per_node", "2", "--module", "amvl"]
    run_tool([*torchrun, *common, "--out", str(tmp_path / "two")], cwd=tmp_path)
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two] and len(one) > 2
    for a, b in zip(one, two):
        if a.name != "metrics.json":
            assert a.read_text() == b.read_text(), a.name
    metrics_one, metrics_two = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "one", tmp_path / "two"))
    assert metrics_two.pop("processes") == 2 and metrics_one.pop("processes") == 1
    assert metrics_one == metrics_two
