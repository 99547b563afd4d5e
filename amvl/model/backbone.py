"""Build a small Qwen vision-language model from config, with a tokenizer and image processor
made offline, or load a released one from a local folder.

The model is the real `transformers` architecture of its family (`model.family`, default
Qwen2.5-VL: vision tower, merger, mRoPE decoder; amvl/model/families/) at a size that trains on a
laptop CPU. The tokenizer is a byte-level BPE trained on the training prompts, with Qwen's chat
and vision special tokens plus the latent slot tokens.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from amvl.errors import UserError
from amvl.model.families import FAMILIES, family

PATCH, MERGE = 14, 2  # Qwen2.5-VL's: the released processor's sizes where no folder says otherwise
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
QWEN_SPECIALS = [PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]


# Qwen2-VL / Qwen2.5-VL's chat format, for tokenizers that carry no template of their own (the
# embedded default's, and old model folders): a system turn unless the messages start with one,
# each image as <|vision_start|><|image_pad|><|vision_end|> where the message places it, and the
# assistant turn opened for the answer. Released Qwen folders carry their own, which is used instead.
DEFAULT_SYSTEM = "You are a helpful assistant."
SYSTEM_TURN = (
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}" + SYSTEM_TURN + "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL's format: the same turns, no default system turn.
QWEN3_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace(SYSTEM_TURN, "")


def slot_tokens(k: int) -> tuple[list[str], list[str]]:
    """Placeholder tokens of the k prior slots (P) and the k posterior slots (Q)."""
    return [f"<|prior_slot_{i}|>" for i in range(k)], [f"<|posterior_slot_{i}|>" for i in range(k)]


def build_tokenizer(corpus: list[str], vocab_size: int, k: int, model_family: str = "qwen2_5_vl") -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `corpus` (deterministic, well under a second), carrying the chat
    template of `model_family`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    prior, posterior = slot_tokens(k)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIALS + prior + posterior,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Every prompt starts with the chat template's system turn: its words get merges too.
    bpe.train_from_iterator((DEFAULT_SYSTEM + text for text in corpus), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=IM_END, pad_token=PAD)
    # saved with it: prompts go through the template
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE if FAMILIES[model_family].SYSTEM_TURN else QWEN3_CHAT_TEMPLATE
    return tokenizer


def build_image_processor(image_size: int, model_family: str = "qwen2_5_vl") -> Qwen2VLImageProcessorPil:
    """Qwen2-VL's PIL image processor (every family's) with explicit settings (no hub, no
    torchvision), at `model_family`'s patch size.

    Images keep their size up to 4x the benchmark's pixel count, so one 14-pixel cell is one patch.
    """
    patch = FAMILIES[model_family].PATCH
    return Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=MERGE,
        temporal_patch_size=2,
        min_pixels=(patch * MERGE) ** 2,
        max_pixels=4 * image_size * image_size,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def mrope_sections(head_dim: int) -> list[int]:
    """Temporal/height/width split of the rotary half-dimension (7B: 128 -> [16, 24, 24])."""
    half = head_dim // 2
    spatial = 3 * half // 8
    return [half - 2 * spatial, spatial, spatial]


def build_small_qwen(model_cfg, tokenizer: PreTrainedTokenizerFast):
    """A randomly initialised model of `model_cfg.family` (Qwen2.5-VL by default) of the size in
    the `model` config section."""
    import torch

    hidden, heads = model_cfg.hidden_size, model_cfg.heads
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIALS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.layers,
        num_attention_heads=heads,
        num_key_value_heads=model_cfg.kv_heads,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
    )
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": mrope_sections(hidden // heads)}
    model_family = family(model_cfg.family, "model.family")
    config = model_family.small_config(
        model_cfg,
        text,
        rope,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=False,
        attn_implementation=check_attn_implementation(model_cfg.attn_implementation),
    )
    torch.manual_seed(model_cfg.init_seed)
    return model_family.MODEL_CLASS(config)


def check_attn_implementation(name: str) -> str:
    """`model.attn_implementation`, or a one-line error where flash-attn is asked for and missing."""
    import importlib.util

    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise UserError("model.attn_implementation: flash_attention_2 needs the flash-attn package and a CUDA GPU")
    return name


def pretrained_config(folder: Path, key: str = "model.pretrained_path") -> dict:
    """The config.json of a Hugging Face folder of a family amvl wraps (amvl/model/families/);
    UserError, naming `key`, where the folder holds no such model."""
    import json

    config_file = Path(folder) / "config.json"
    if not config_file.exists() or not any(Path(folder).glob("*.safetensors")):
        raise UserError(
            f"{key}: {folder} has no config.json and *.safetensors; put a local copy of "
            "Qwen/Qwen2.5-VL-7B-Instruct (its Hugging Face repo, with tokenizer and preprocessor files) there"
        )
    config = json.loads(config_file.read_text())
    family(config.get("model_type"), str(config_file))
    return config


def load_pretrained(folder: Path, k: int, dtype=None, attn_implementation: str = "sdpa"):
    """A local Hugging Face folder of a family amvl wraps (Qwen2.5-VL, Qwen2-VL, Qwen3-VL)
    -> (backbone, tokenizer, image processor), with the
    2k slot tokens added to the tokenizer and both embedding tables. `dtype` is the training
    precision: loading in it directly keeps each rank from holding a float32 copy first.

    New rows start as the mean embedding plus noise of the table's own spread, rescaled to the
    table's mean norm: distinct from each other, and at the scale the decoder reads.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    folder = Path(folder)
    pretrained_config(folder)
    tokenizer, image_processor = load_processors(folder)
    backbone = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=dtype or torch.float32, attn_implementation=check_attn_implementation(attn_implementation)
    )
    prior, posterior = slot_tokens(k)
    tokenizer.add_tokens(prior + posterior, special_tokens=True)
    new_ids = tokenizer.convert_tokens_to_ids(prior + posterior)
    # Released Qwen checkpoints pad their tables beyond the tokenizer: grow only when needed.
    if max(new_ids) >= backbone.get_input_embeddings().weight.shape[0]:
        backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for table in {backbone.get_input_embeddings().weight, backbone.get_output_embeddings().weight}:
            known = table[: min(new_ids)].float()
            generator = torch.Generator().manual_seed(0)
            new = known.mean(0) + torch.randn((len(new_ids), table.shape[1]), generator=generator) * known.std(0)
            new = new * (known.norm(dim=-1).mean() / new.norm(dim=-1, keepdim=True))
            table[new_ids] = new.to(table.dtype)
    return backbone, tokenizer, image_processor


def save_processors(folder: Path, tokenizer, image_processor) -> None:
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)


def load_processors(folder: Path):
    """Tokenizer and image processor saved by `save_processors` (or a real Qwen2.5-VL folder).
    A folder whose chat template sits with the processor (chat_template.json) lends it to the tokenizer."""
    import json

    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor_template = Path(folder) / "chat_template.json"
    if not tokenizer.chat_template and processor_template.exists():
        tokenizer.chat_template = json.loads(processor_template.read_text())["chat_template"]
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    return tokenizer, image_processor
