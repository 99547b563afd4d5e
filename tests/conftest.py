import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amvl.config import Section, validate

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool_env() -> dict:
    """Environment for subprocesses: this interpreter's scripts (amvl, snakemake, dvc) first.

    In-process training tests pose as rank 0 of a one-process group (and hold its port); a
    child must start its own group, not join that one.
    """
    launcher = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_tool(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def copy_project(dest: Path) -> Path:
    """The workflow files of this checkout, without any outputs, in `dest`."""
    for name in ("Snakefile", "dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("workflow", "config", "amvl", "envs", ".dvc", "profiles"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
    return dest


@pytest.fixture
def tiny_cfg() -> Section:
    """The smoke-sized config, defaults filled, as the stages receive it."""
    return Section(
        validate(
            {
                "data": {"train_size": 6, "val_size": 4},
                "model": {"vocab_size": 320, "freeze_vision": False},
                "train": {"steps": 4, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1},
                "evaluate": {"batch_size": 4},
            }
        )
    )


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """A small synthetic dataset written by the prepare stage."""
    from amvl.stages import prepare

    out = tmp_path_factory.mktemp("data") / "synthetic"
    prepare.run(validate({"data": {"train_size": 6, "val_size": 4}}), out)
    return out


@pytest.fixture(scope="session")
def released_model(prepared_data, tmp_path_factory) -> Path:
    """A tiny Qwen2.5-VL saved as a released checkpoint is: save_pretrained, a tokenizer with a
    chat template of its own (its system turn says "You answer BLINK questions.") and no slot
    tokens, and a preprocessor config."""
    from amvl.data.blink import read_split
    from amvl.model.backbone import QWEN_CHAT_TEMPLATE, build_image_processor, build_small_qwen, build_tokenizer

    folder = tmp_path_factory.mktemp("Qwen2.5-VL-tiny")
    rows = read_split(prepared_data / "train.parquet")
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, k=0)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE.replace("You are a helpful assistant.", "You answer BLINK questions.")
    build_small_qwen(Section(validate({})).model, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    build_image_processor(84).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def released_families(prepared_data, tmp_path_factory) -> dict[str, Path]:
    """A tiny random Qwen2-VL and Qwen3-VL, each saved in its family's released layout: weights by
    save_pretrained, the end tokens of the release's generation_config (<|im_end|>, <|endoftext|>),
    a tokenizer without slot tokens and a preprocessor_config.json as the release writes it (Qwen3-VL:
    16-pixel patches, its chat template in chat_template.json, the processor's file, with no system turn)."""
    import json

    from amvl.data.blink import read_split
    from amvl.model.backbone import IM_END, PAD, QWEN3_CHAT_TEMPLATE, build_image_processor, build_small_qwen, build_tokenizer

    rows = read_split(prepared_data / "train.parquet")
    folders = {}
    for family in ("qwen2_vl", "qwen3_vl"):
        folder = folders[family] = tmp_path_factory.mktemp(f"{family}-tiny")
        tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, 0, family)
        backbone = build_small_qwen(Section(validate({"model": {"family": family}})).model, tokenizer)
        backbone.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids([IM_END, PAD])
        backbone.save_pretrained(folder)
        processor = build_image_processor(84, family).to_dict()
        processor["image_processor_type"] = "Qwen2VLImageProcessorFast"  # the class the release names
        if family == "qwen3_vl":
            tokenizer.chat_template = None
            (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN3_CHAT_TEMPLATE}))
            processor["processor_class"] = "Qwen3VLProcessor"
        tokenizer.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folders
