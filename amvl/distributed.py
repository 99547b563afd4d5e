"""DeepSpeed glue: start one process without a launcher, pick the device, load checkpoints safely.

DeepSpeed pickles a few of its own classes into checkpoints and loads them with
`weights_only=False`. Before any checkpoint reaches DeepSpeed we check, with
`weights_only`-style inspection, that it holds nothing but tensors, plain containers and the
allow-listed DeepSpeed classes below, so a foreign file cannot run code.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from pathlib import Path

import torch

from amvl.errors import UserError

SAFE_DEEPSPEED_GLOBALS = {
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at this moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def import_deepspeed():
    """Import DeepSpeed; outside a launcher, pose as rank 0 of 1 (otherwise it looks for MPI)."""
    if "RANK" not in os.environ:
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
        )
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    deepspeed.utils.logger.setLevel(logging.WARNING)
    if get_accelerator().device_name() == "cpu":
        # The CPU shared-memory all-reduce is a fast path that JIT-compiles for ~80 s; gloo does without.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    return deepspeed


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}  # config name -> torch dtype


def device(name: str = "auto") -> torch.device:
    """Where a stage computes. `auto`: the accelerator DeepSpeed finds (this process's GPU under a
    launcher), else the CPU; the training engine places the model by the same rule."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("evaluate.device: cuda, but torch sees no CUDA GPU here (a CPU build, or no driver); use auto")
    if name != "auto":
        return torch.device(name)
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return torch.device("cpu")
    return torch.device(accelerator.device_name(int(os.environ.get("LOCAL_RANK", 0))))


def latest_tag(checkpoint_dir: Path) -> str | None:
    latest = Path(checkpoint_dir) / "latest"
    return latest.read_text().strip() if latest.exists() else None


def check_checkpoint_safe(tag_dir: Path) -> None:
    """Refuse a checkpoint whose pickles reference anything beyond tensors and known classes."""
    files = sorted(Path(tag_dir).glob("*.pt"))
    if not files:
        raise UserError(f"{tag_dir}: no checkpoint files (*.pt)")
    for file in files:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(file)) - SAFE_DEEPSPEED_GLOBALS
        if unsafe:
            raise UserError(f"{file}: refusing to load, it pickles {', '.join(sorted(unsafe))}")


def load_fp32_state_dict(checkpoint_dir: Path, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full-precision module weights of a DeepSpeed checkpoint, whatever its ZeRO stage."""
    tag_dir = Path(checkpoint_dir) / tag
    check_checkpoint_safe(tag_dir)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # Stages 0-2 keep whole weights in the model-states file (in the training dtype); stage 3
    # keeps placeholders there. ZeRO shards hold the fp32 master copy of the trained weights,
    # but stage 1 leaves frozen ones (a frozen vision tower) out: take those from the module.
    state = {}
    if zero_stage < 3:
        module = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
        state = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in module.items()}
    if zero_stage > 0:
        state.update(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag))
    return state
