"""A procedurally generated mini-BLINK: the embedded default benchmark.

Every subtask mimics a BLINK subtask's question style and image count, in BLINK's schema.
Images are drawn on a grid of 28-pixel cells, one cell per merged image token (2x2 patches of
14 pixels), so that each object lands in exactly one token the language model reads. Everything is a function of the seed.

| subtask           | images | options | chance | what it takes                                         |
|-------------------|-------:|--------:|-------:|-------------------------------------------------------|
| Counting          | 1      | 4       | 25%    | count 1-4 coloured squares; options are 1..4 in order |
| Spatial_Relation  | 1      | 2       | 50%    | is the red square left of the blue one (same row)?    |
| Visual_Similarity | 3      | 2       | 50%    | the close candidate moves one square, the far one     |
|                   |        |         |        | recolours every square                                |

Measured with the default model (2 layers, width 64, 84-pixel images): Counting and
Visual_Similarity are learned within about 500 steps. Spatial_Relation stays at chance: the
vision tower has no absolute position embedding, so reading a column from pixels is slow to
learn from scratch (a tiny model learned it only when the background encoded the column).
Counting with shuffled number options also stayed at chance: matching a count to the letter that
holds it is a second step the small model did not find in 1,000 steps.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from amvl.data.blink import blink_prompt, letter

CELL = 28
BACKGROUND = (235, 235, 235)
COLORS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60)}


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


def counting(rng, image_size, answer_index):
    grid = image_size // CELL
    count = answer_index + 1  # options "1".."4" in order, so the balanced letter sets the count
    palette = list(COLORS.values())
    cells = {cell: palette[rng.integers(len(palette))] for cell in random_cells(rng, grid, count)}
    return dict(
        question="How many coloured squares are in the image?",
        choices=["1", "2", "3", "4"],
        images=[draw_cells(image_size, cells)],
        explanation=f"There are {count} coloured squares.",
    )


def spatial_relation(rng, image_size, answer_index):
    grid = image_size // CELL
    first, second = rng.permutation(["red", "blue"])
    left_col, right_col = sorted(rng.choice(grid, size=2, replace=False))
    row = int(rng.integers(grid))
    is_left = answer_index == 0  # choices are always [yes, no], as in BLINK
    first_col, second_col = (left_col, right_col) if is_left else (right_col, left_col)
    cells = {(row, int(first_col)): COLORS[first], (row, int(second_col)): COLORS[second]}
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

    close = dict(reference)
    for cell in random_cells(rng, grid, 1):  # one cell toggled
        if cell in close:
            del close[cell]
        else:
            close[cell] = palette[rng.integers(len(palette))]
    # Same layout, every square a different colour: far in colour, not in position.
    far = {cell: palette[(palette.index(c) + 1 + rng.integers(len(palette) - 1)) % len(palette)] for cell, c in reference.items()}
    candidates = [close, far] if answer_index == 0 else [far, close]
    return dict(
        question="Given three similar but different images, take the first image as reference. "
        "Can you tell which one of the latter two images is most similar to the first one?",
        choices=["The second image", "The third image"],
        images=[draw_cells(image_size, c) for c in (reference, *candidates)],
        explanation=f"The {'second' if answer_index == 0 else 'third'} image differs from the reference in one cell;"
        " the other recolours every square.",
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
