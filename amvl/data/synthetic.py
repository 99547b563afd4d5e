"""A procedurally generated mini-BLINK: the embedded default benchmark.

Every subtask mimics a BLINK subtask's question style and image count, in BLINK's schema.
Images are drawn on a grid of 28-pixel cells, one cell per merged image token (2x2 patches of
14 pixels), so that each object lands in exactly one token the language model reads. Everything is a function of the seed.

| subtask           | images | options | chance | what it takes                                  |
|-------------------|-------:|--------:|-------:|------------------------------------------------|
| Counting          | 1      | 4       | 25%    | count coloured squares (1-6)                   |
| Spatial_Relation  | 1      | 2       | 50%    | compare the columns of two named squares       |
| Visual_Similarity | 3      | 2       | 50%    | which candidate differs less from the reference|
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from amvl.data.blink import blink_prompt, letter

CELL = 28
BACKGROUND = (235, 235, 235)
COLORS = {
    "red": (220, 40, 40),
    "blue": (40, 70, 220),
    "green": (40, 170, 60),
    "yellow": (230, 200, 30),
    "purple": (140, 50, 170),
    "orange": (240, 130, 20),
}


def draw_cells(image_size: int, cells: dict[tuple[int, int], tuple[int, int, int]]) -> Image.Image:
    """An image with a filled square (2-pixel margin) in each given (row, col) cell."""
    pixels = np.full((image_size, image_size, 3), BACKGROUND, dtype=np.uint8)
    for (row, col), color in cells.items():
        top, left = row * CELL + 2, col * CELL + 2
        pixels[top : top + CELL - 4, left : left + CELL - 4] = color
    return Image.fromarray(pixels)


def random_cells(rng: np.random.Generator, grid: int, count: int) -> list[tuple[int, int]]:
    flat = rng.choice(grid * grid, size=count, replace=False)
    return [(int(i) // grid, int(i) % grid) for i in flat]


def place_answer(rng: np.random.Generator, correct: str, distractors: list[str], answer_index: int) -> list[str]:
    """Choices with `correct` at `answer_index` and the distractors shuffled around it."""
    others = [distractors[i] for i in rng.permutation(len(distractors))]
    return others[:answer_index] + [correct] + others[answer_index:]


def counting(rng, image_size, answer_index):
    grid = image_size // CELL
    count = int(rng.integers(1, min(6, grid * grid) + 1))
    palette = list(COLORS.values())
    cells = {cell: palette[rng.integers(len(palette))] for cell in random_cells(rng, grid, count)}
    wrong = [str(n) for n in rng.permutation([n for n in range(1, 7) if n != count])[:3]]
    return dict(
        question="How many coloured squares are in the image?",
        choices=place_answer(rng, str(count), wrong, answer_index),
        images=[draw_cells(image_size, cells)],
        explanation=f"There are {count} coloured squares.",
    )


def spatial_relation(rng, image_size, answer_index):
    grid = image_size // CELL
    first, second = rng.choice(list(COLORS), size=2, replace=False)
    left_col, right_col = sorted(rng.choice(grid, size=2, replace=False))
    rows = rng.integers(grid, size=2)
    is_left = answer_index == 0  # choices are always [yes, no], as in BLINK
    first_col, second_col = (left_col, right_col) if is_left else (right_col, left_col)
    cells = {(int(rows[0]), int(first_col)): COLORS[first], (int(rows[1]), int(second_col)): COLORS[second]}
    return dict(
        question=f"Is the {first} square to the left of the {second} square?",
        choices=["yes", "no"],
        images=[draw_cells(image_size, cells)],
        explanation=f"The {first} square is in column {first_col + 1}, the {second} in column {second_col + 1}.",
    )


def visual_similarity(rng, image_size, answer_index):
    grid = image_size // CELL
    palette = list(COLORS.values())
    reference = {cell: palette[rng.integers(len(palette))] for cell in random_cells(rng, grid, grid * grid // 2)}

    def edited(changes: int) -> dict:
        cells = dict(reference)
        for cell in random_cells(rng, grid, changes):
            if cell in cells:
                del cells[cell]
            else:
                cells[cell] = palette[rng.integers(len(palette))]
        return cells

    close, far = edited(1), edited(grid * grid // 2)
    candidates = [close, far] if answer_index == 0 else [far, close]
    return dict(
        question="Given three similar but different images, take the first image as reference. "
        "Can you tell which one of the latter two images is most similar to the first one?",
        choices=["The second image", "The third image"],
        images=[draw_cells(image_size, c) for c in (reference, *candidates)],
        explanation=f"The {'second' if answer_index == 0 else 'third'} image differs from the reference in one cell.",
    )


# name -> (generator, number of options)
SUBTASKS: dict[str, tuple[Callable, int]] = {
    "Counting": (counting, 4),
    "Spatial_Relation": (spatial_relation, 2),
    "Visual_Similarity": (visual_similarity, 2),
}


def generate(subtask: str, split: str, size: int, seed: int, image_size: int) -> list[dict]:
    """`size` rows of one subtask; answer letters cycle so they are balanced."""
    make, options = SUBTASKS[subtask]
    stream = [seed, sorted(SUBTASKS).index(subtask), ["train", "val"].index(split)]
    rng = np.random.default_rng(stream)
    rows = []
    for i in range(size):
        answer_index = i % options
        item = make(rng, image_size, answer_index)
        rows.append(
            dict(
                idx=f"{split}_{subtask}_{i + 1}",
                question=item["question"],
                sub_task=subtask,
                **{f"image_{n + 1}": image for n, image in enumerate(item["images"])},
                choices=item["choices"],
                answer=letter(answer_index),
                prompt=blink_prompt(item["question"], item["choices"]),
                explanation=item["explanation"] if split == "train" else "",
            )
        )
    return rows
