"""Turn benchmark rows into token ids and pixels, and examples into batches.

The prompt is the tokenizer's own chat template (Qwen's format where it has none) applied to one
user turn: the row's images in the order image_1..image_4, then the row's prompt. Each `<|image_pad|>` the template writes becomes one per merged patch of
its image, as Qwen's processor does. The target is the answer letter as BLINK writes it, "(A)", optionally followed by the
option's text (`model.answer_format`), then `<|im_end|>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from amvl.data.blink import LETTERS, letter
from amvl.model.backbone import IM_END, IMAGE_PAD, MERGE, QWEN_CHAT_TEMPLATE


@dataclass
class Example:
    """One question, tokenized: what the model needs, independent of batch layout."""

    idx: str
    sub_task: str
    prompt_ids: list[int]
    answer_ids: list[int]  # the gold answer, "(X)<|im_end|>" (or free text for a training record)
    choice_ids: list[list[int]]  # every option's answer, in letter order; [] without choices
    answer_index: int  # -1 without choices or with a hidden answer
    rationale_ids: list[int]  # the row's explanation, what a privileged posterior reads before y; [] without one
    step_ids: list[list[int]]  # each rationale step's result, what slot t's rationale readout names (`rationale_steps`)
    pixel_values: torch.Tensor  # (patches, channels * temporal * patch * patch)
    image_grid_thw: torch.Tensor  # (images, 3)


def chat_prompt(tokenizer, prompt: str, images: int) -> str:
    """The model's chat template over one user turn of `images` images then `prompt`, with one
    `<|image_pad|>` per image, and the assistant turn opened."""
    content = [{"type": "image"}] * images + [{"type": "text", "text": prompt}]
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template=tokenizer.chat_template or QWEN_CHAT_TEMPLATE,
        add_generation_prompt=True,
        tokenize=False,
    )


def prompt_text(tokenizer, prompt: str, grids: torch.Tensor, merge: int = MERGE) -> str:
    """`chat_prompt` with each image's `<|image_pad|>` repeated once per merged patch of it (`merge`
    x `merge` patches, the image processor's merge_size)."""
    pieces = chat_prompt(tokenizer, prompt, len(grids)).split(IMAGE_PAD)
    if len(pieces) != len(grids) + 1:
        raise ValueError(f"the chat template wrote {len(pieces) - 1} {IMAGE_PAD} for {len(grids)} images")
    pads = [IMAGE_PAD * int(g.prod() // merge**2) for g in grids]
    return "".join(piece + pad for piece, pad in zip(pieces, pads + [""]))


ANSWER_FORMATS = ("letter", "letter_and_option", "rationale_then_answer")


def answer_text(index: int, option: str, answer_format: str) -> str:
    """The target for option `index`: "(A)", or "(A) the red square" (the letter then decides the
    tokens after it, so its identity is kept in the hidden states a posterior reads); a chain of
    thought ends with "The answer is (A) the red square" (`targets` puts the rationale first)."""
    if answer_format == "letter":
        return letter(index)
    return ("The answer is " if answer_format == "rationale_then_answer" else "") + f"{letter(index)} {option}"


def targets(row: dict, tokenizer, answer_format: str = "letter") -> tuple[list[int], list[list[int]], int]:
    """(answer ids, every option's answer ids, answer index) of a row: see `Example`. A chain of
    thought (rationale_then_answer) trains on the row's rationale, then the answer; its options
    are scored without one."""
    options = row["choices"] or []
    choice_ids = [tokenizer(answer_text(i, c, answer_format) + IM_END).input_ids for i, c in enumerate(options)]
    known = choice_ids and row["answer"] in [letter(i) for i in range(len(choice_ids))]  # test rows: "hidden"
    answer_index = LETTERS.index(row["answer"][1]) if known else -1
    if not choice_ids:
        return tokenizer(row["answer"] + IM_END).input_ids, [], -1
    answer_ids = choice_ids[answer_index] if known else []
    if known and answer_format == "rationale_then_answer" and row.get("explanation"):
        answer_ids = tokenizer(row["explanation"] + " ").input_ids + answer_ids
    return answer_ids, choice_ids, answer_index


def rationale_steps(tokenizer, explanation: str) -> list[list[int]]:
    """A rationale's steps are its sentences, and a step's result is the sentence's last word
    (pointer chasing: "red points to blue." -> "blue"): the tokens of each, in order."""
    sentences = [s.split() for s in re.split(r"[.;]", explanation or "") if s.strip()]
    return [tokenizer(" " + words[-1]).input_ids for words in sentences]


def encode(row: dict, tokenizer, image_processor, answer_format: str = "letter", size: dict | None = None,
           rationale: bool = False) -> Example:  # fmt: skip
    """`size` ({shortest_edge, longest_edge}: min and max pixels per image) overrides the image
    processor's own (amvl/data/budget.py resizes an example down to its token limit with it).
    `rationale`: also tokenize the row's rationale and its steps, for a model that reads them
    (`LatentReasoner.reads_rationale`); without it they stay empty."""
    pixels = image_processor(images=row["images"], return_tensors="pt", **({"size": size} if size else {}))
    grids = pixels["image_grid_thw"]
    answer_ids, choice_ids, answer_index = targets(row, tokenizer, answer_format)
    return Example(
        idx=row["idx"],
        sub_task=row["sub_task"],
        prompt_ids=tokenizer(prompt_text(tokenizer, row["prompt"], grids, image_processor.merge_size)).input_ids,
        answer_ids=answer_ids,
        choice_ids=choice_ids,
        answer_index=answer_index,
        rationale_ids=tokenizer(row["explanation"] + " ").input_ids if rationale and row.get("explanation") else [],
        step_ids=rationale_steps(tokenizer, row.get("explanation")) if rationale else [],
        pixel_values=pixels["pixel_values"],
        image_grid_thw=grids,
    )


def tokens(example: Example) -> int:
    """The longest sequence the example makes: its prompt and its longest target (answer or option)."""
    return len(example.prompt_ids) + max([len(example.answer_ids), *map(len, example.choice_ids)])


def collate(examples: list[Example]) -> dict:
    """A batch: token lists stay ragged (the model lays them out), pixels are concatenated."""
    return {
        "prompt_ids": [e.prompt_ids for e in examples],
        "answer_ids": [e.answer_ids for e in examples],
        "rationale_ids": [e.rationale_ids for e in examples],
        "step_ids": [e.step_ids for e in examples],
        "pixel_values": torch.cat([e.pixel_values for e in examples]),
        "image_grid_thw": torch.cat([e.image_grid_thw for e in examples]),
        "images_per_example": [len(e.image_grid_thw) for e in examples],
    }
