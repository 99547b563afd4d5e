"""Token budgets: pixels per image, and tokens per example.

Qwen2.5-VL's processor resizes each image to multiples of 28 pixels within [min_pixels,
max_pixels] (`smart_resize`), one visual token per 28x28 area; the released one allows 16,384
tokens an image, so four large images can make a sequence no GPU holds. Two limits, in
`train` and `evaluate` (0 = off):

- `min_pixels`, `max_pixels` per image: the processor's own unless set (as Monet and lmms-eval
  cap them); training saves the capped processor with the model, so evaluation reads the same;
- `max_tokens` per example: its prompt (text and image tokens) plus its longest target.

An example over `max_tokens` is resized down: all its images get one lower max_pixels, the
largest that fits. If even min_pixels does not fit (the text alone is too long), it is skipped and
counted; nothing is truncated, so no answer is cut off.
"""

from __future__ import annotations

import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from amvl.data.collate import Example, encode, prompt_text, targets
from amvl.errors import ConfigError


def caps(image_processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of an image processor."""
    return image_processor.size["shortest_edge"], image_processor.size["longest_edge"]


def set_caps(image_processor, min_pixels: int, max_pixels: int, section: str) -> None:
    """Override the processor's pixel limits where given (0 = keep its own)."""
    if not (min_pixels or max_pixels):
        return  # the processor untouched: the embedded default encodes exactly as before
    low, high = caps(image_processor)
    low, high = min_pixels or low, max_pixels or high
    if low > high:
        raise ConfigError(f"{section}.min_pixels: {low} is above max_pixels {high}")
    image_processor.size = {"shortest_edge": low, "longest_edge": high}


def image_tokens(images, image_processor, max_pixels: int) -> int:
    """Visual tokens of `images` (PIL) with the processor's min_pixels and `max_pixels`."""
    factor = image_processor.patch_size * image_processor.merge_size
    low = caps(image_processor)[0]
    sized = [smart_resize(image.height, image.width, factor, low, max_pixels) for image in images]
    return sum(height * width // factor**2 for height, width in sized)


def text_tokens(row: dict, tokenizer, answer_format: str) -> int:
    """Tokens of the example without its image tokens: the chat and vision markers are special
    tokens, so the text between them tokenizes the same with or without image pads."""
    no_pads = torch.zeros((len(row["images"]), 3), dtype=torch.long)
    answer_ids, choice_ids, _ = targets(row, tokenizer, answer_format)
    return len(tokenizer(prompt_text(tokenizer, row["prompt"], no_pads)).input_ids) + max(map(len, [answer_ids, *choice_ids]))


Plan = tuple[str, "dict | None"]  # ("", None), ("resized", image processor size) or ("skipped", None)


def plan(row: dict, tokenizer, image_processor, answer_format: str, max_tokens: int) -> Plan:
    """How the row meets `max_tokens` (0 = no limit), from its text and its images' sizes alone (a
    header row does): as it is, resized (all its images to the largest max_pixels that fits), or
    skipped (not even at min_pixels)."""
    if not max_tokens:
        return "", None
    low, high = caps(image_processor)
    text = text_tokens(row, tokenizer, answer_format)
    fits_at = lambda cap: text + image_tokens(row["images"], image_processor, cap) <= max_tokens  # noqa: E731
    if fits_at(high):
        return "", None
    if not fits_at(low):
        return "skipped", None
    while high - low > 1:  # the largest cap that fits: image tokens never fall as the cap rises
        middle = (low + high) // 2
        low, high = (middle, high) if fits_at(middle) else (low, middle)
    return "resized", {"shortest_edge": caps(image_processor)[0], "longest_edge": low}


def fit(row: dict, tokenizer, image_processor, answer_format: str, max_tokens: int, rationale: bool = False,
        planned: Plan | None = None) -> tuple[Example | None, str]:  # fmt: skip
    """(example, "") within the limit as it is, (example, "resized") after resizing its images
    down, or (None, "skipped"), as `plan` decides (or `planned`, decided already from the row's
    header); `rationale` as `encode` takes it."""
    status, size = planned or plan(row, tokenizer, image_processor, answer_format, max_tokens)
    if status == "skipped":
        return None, status
    return encode(row, tokenizer, image_processor, answer_format, size=size, rationale=rationale), status
