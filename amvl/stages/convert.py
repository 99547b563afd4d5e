"""convert: the final DeepSpeed checkpoint of a run -> a self-contained model folder.

models/<experiment>/<run>/
  model.safetensors, config.json, generation_config.json   the backbone, Hugging Face layout
                                                            (Qwen2_5_VLForConditionalGeneration.from_pretrained)
  latent_modules.safetensors, amvl_config.json             prior/posterior heads, injector, slot ids
  tokenizer files, preprocessor_config.json                 what evaluation needs to encode inputs

It runs on the host whatever the machine: consolidating ZeRO shards is DeepSpeed's fp32
concatenation, with nothing for an accelerator to compute. The weights are written in fp32 (the
optimizer's master copy) whatever the training precision; `amvl evaluate` loads them in its own.
"""

from __future__ import annotations

import json
from pathlib import Path

from amvl.distributed import load_fp32_state_dict
from amvl.errors import UserError
from amvl.io import atomic_dir
from amvl.model.backbone import load_processors, save_processors
from amvl.model.latent import load_skeleton


def run(cfg: dict, run_dir: Path, out_dir: Path) -> None:
    run_dir = Path(run_dir)
    summary_path = run_dir / "train_summary.json"
    if not summary_path.exists():
        raise UserError(f"{summary_path}: not found; train the run first (amvl train)")
    summary = json.loads(summary_path.read_text())
    state = load_fp32_state_dict(run_dir / "checkpoints", summary["tag"], summary["zero_stage"])

    model = load_skeleton(run_dir / "skeleton")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Non-persistent buffers (rotary frequencies) are rebuilt by the constructor, not stored.
    missing = [key for key in missing if key in dict(model.named_parameters())]
    if missing or unexpected:
        raise UserError(
            f"{run_dir}: checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    tokenizer, image_processor = load_processors(run_dir / "skeleton")
    with atomic_dir(out_dir) as folder:
        model.save(folder)
        save_processors(folder, tokenizer, image_processor)
