"""Backbone families beyond Qwen2.5-VL: Qwen2-VL and Qwen3-VL from folders in their released
layouts (tiny random models, conftest's `released_families`), through every stage, and `amvl ask`.
The cache-reuse, checkpointing and inference-agreement checks of every family are in test_latent_paths."""

import json

import pytest
import torch
import yaml
from conftest import copy_project, run_tool
from PIL import Image

import amvl
from amvl.config import Section, validate
from amvl.data.blink import read_split
from amvl.data.collate import chat_prompt, collate, encode
from amvl.errors import ConfigError, UserError
from amvl.model.backbone import load_pretrained
from amvl.model.latent import wrap_backbone
from amvl.objectives import OBJECTIVES, build_objective


def test_a_released_qwen3_vl_folder_brings_its_own_patches_template_and_end_tokens(released_families):
    backbone, tokenizer, image_processor = load_pretrained(released_families["qwen3_vl"], k=2)
    assert backbone.config.model_type == "qwen3_vl" and image_processor.patch_size == 16
    prompt = chat_prompt(tokenizer, "How many?", images=1)  # chat_template.json's: no system turn
    assert prompt.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?")
    assert sorted(backbone.generation_config.eos_token_id) == sorted(tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))


@pytest.mark.parametrize("sequential", [False, True])
def test_every_objective_trains_a_qwen3_vl(released_families, prepared_data, sequential):
    rows = read_split(prepared_data / "train.parquet")[:3]
    for name, (_, latents) in OBJECTIVES.items():
        cfg = Section(validate({"model": {"sequential_slots": sequential}, "objective": {"name": name}}))
        backbone, tokenizer, image_processor = load_pretrained(released_families["qwen3_vl"], k=cfg.model.latent_slots)
        objective = build_objective(**cfg.objective)
        model = wrap_backbone(backbone, tokenizer, cfg.model, objective.slot_kind)
        batch = collate([encode(r, tokenizer, image_processor) for r in rows])
        out = model(batch, latents=latents)
        loss = objective(out["ntp_loss"], out["prior"], out["posterior"], step=200, model_out=out)["loss"]
        loss.backward()
        trained = model.backbone.model.language_model.layers[0].mlp.up_proj.weight.grad
        assert torch.isfinite(loss) and trained.abs().sum() > 0, name
        if objective.slot_kind == "latent":
            assert model.injector.proj.weight.grad.abs().sum() > 0, name  # the decoder read Z


def test_an_unknown_or_refused_family_is_one_line(tmp_path, prepared_data):
    (tmp_path / "model.safetensors").write_bytes(b"")
    for model_type, why in (("qwen3_5", "recurrent state"), ("llava", "not a family amvl knows")):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
        with pytest.raises(UserError, match=f"model_type '{model_type}' .*{why}.*; supported: qwen2_5_vl, qwen2_vl, qwen3_vl"):
            load_pretrained(tmp_path, k=2)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")  # a good image: the model folder is what fails
    result = run_tool(["amvl", "ask", "--model", str(tmp_path), "--image", "a.png", "Why?"], tmp_path, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "llava" in result.stderr
    with pytest.raises(ConfigError, match="model.family"):
        validate({"model": {"family": "qwen3_5"}})


def test_every_family_through_snakemake_then_zero_shot_and_ask(released_families, tmp_path):
    """Qwen3-VL and Qwen2-VL folders: trained (amvl; a sequential latent_det with a rationale readout,
    scored by likelihood), converted, evaluated with diagnostics, and evaluated zero-shot, in one
    workflow; then `amvl evaluate --model FOLDER`, and `amvl ask` on a converted and a plain folder."""
    (tmp_path / "project").mkdir()
    project = copy_project(tmp_path / "project")
    config = yaml.safe_load((project / "config/smoke.yaml").read_text())
    qwen3, qwen2 = ({"backbone": "pretrained", "pretrained_path": str(released_families[f])} for f in ("qwen3_vl", "qwen2_vl"))
    config.update(experiment="families", model={"freeze_vision": False}, runs={
        "qwen3_amvl": {"model": qwen3},
        "qwen3_sequential": {"model": {**qwen3, "sequential_slots": True},
                             "objective": {"name": "latent_det", "rationale_weight": 0.1},
                             "evaluate": {"mode": "likelihood"}},
        "qwen3_base": {"model": qwen3, "objective": {"name": "none"}},
        "qwen2_amvl": {"model": qwen2},
        "qwen2_base": {"model": qwen2, "objective": {"name": "none"}},
    })  # fmt: skip
    (project / "config/families.yaml").write_text(yaml.safe_dump(config))
    run_tool(["snakemake", "--cores", "2", "--configfile", "config/families.yaml"], cwd=project)

    for run in ("qwen3_amvl", "qwen3_sequential", "qwen2_amvl"):
        family = run.split("_")[0] + "_vl"
        assert json.loads((project / f"models/families/{run}/config.json").read_text())["model_type"] == family
        metrics = json.loads((project / f"results/families/{run}/metrics.json").read_text())
        assert 0 <= metrics["macro_accuracy"] <= 1 and not metrics["model"]["zero_shot"]
    assert "diagnostics" in json.loads((project / "results/families/qwen3_amvl/metrics.json").read_text())
    for run in ("qwen3_base", "qwen2_base"):
        assert json.loads((project / f"results/families/{run}/metrics.json").read_text())["model"]["zero_shot"]
    assert "qwen3_sequential" in (project / "reports/families/report.md").read_text()

    folder = released_families["qwen3_vl"]
    out = tmp_path / "zero_shot"
    said = run_tool(["amvl", "evaluate", "--model", str(folder), "--data", "data/smoke", "--out", str(out)], project)
    assert "macro accuracy" in said.stdout and json.loads((out / "metrics.json").read_text())["model"]["zero_shot"]

    image = tmp_path / "question.png"
    Image.new("RGB", (84, 84), (200, 30, 30)).save(image)
    ask = ["amvl", "ask", "--image", str(image), "Which colour is the square?", "--choices", "red", "blue", "--latents"]
    latent = run_tool([*ask, "--model", "models/families/qwen3_sequential"], project).stdout.splitlines()
    assert latent[0][:3] in ("(A)", "(B)", "(Z)") and len(latent) == 1 + 4  # the answer, then the 4 slots
    assert all(line.startswith(f"slot {t + 1}: prior sigma ") and "readout: " in line for t, line in enumerate(latent[1:]))
    plain = run_tool([*ask, "--model", str(folder)], project).stdout.splitlines()
    assert len(plain) == 1  # a plain folder has no slots to show
    missing = run_tool([*ask[:3], "nowhere.png", *ask[4:], "--model", str(folder)], project, check=False)
    assert missing.returncode == 2 and missing.stderr.strip() == "amvl ask: error: nowhere.png: no such image file"

    model = amvl.load(project / "models/families/qwen2_amvl")  # the three lines the README shows
    answer = model.ask([image], "Which colour is the square?", choices=["red", "blue"], latents=True)
    assert answer.choice in ("(A)", "(B)", "(Z)") and len(answer.slots) == 4 and answer.slots[0].readout == []
