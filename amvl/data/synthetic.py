"""A procedurally generated mini-BLINK: the embedded default benchmark.

Every subtask mimics a BLINK subtask's question style and image count, in BLINK's schema.
Images are drawn on a grid of 28-pixel cells, one cell per merged image token (2x2 patches of
14 pixels), so that each object lands in exactly one token the language model reads.
Everything is a function of the seed.

| subtask           | images | options | chance | what it takes                                   | latent steps |
|-------------------|-------:|--------:|-------:|-------------------------------------------------|--------------|
| Counting          | 1      | 4       | 25%    | count 1-4 squares; options 1..4 in order        | 1: a tally   |
| Spatial_Relation  | 1      | 2       | 50%    | is the red square left of the blue one?         | 1: compare   |
| Visual_Similarity | 3      | 2       | 50%    | the close candidate moves one square, the far   | 1: compare   |
|                   |        |         |        | one recolours every square                      |              |
| Relative_Depth    | 1      | 2       | 50%    | which of two squares is closer; size is the cue | 1: compare   |
| Jigsaw            | 3      | 2       | 50%    | the bottom row's colour, then the candidate of  | 2            |
|                   |        |         |        | that colour                                     |              |
| IQ_Test           | 1      | 3       | 33%    | the period (2 or 3) of a colour cycle, then the | 2, shortcut  |
|                   |        |         |        | colour of the last cell; the majority colour is |              |
|                   |        |         |        | a shortcut that holds for period 2 only         |              |
| Pointer_<h>hop    | 1      | 8       | 12.5%  | nine "colour -> colour" cells; follow h arrows  | h lookups,   |
| (h = 1..4)        |        |         |        | from the grey cell (the rationale lists the     | h - 1 on the |
|                   |        |         |        | colours passed)                                 | way          |

Every row carries its rationale (the intermediate results) in `explanation` in the train split,
as BLINK rows carry one; the val split leaves it empty, except for pointer chasing, whose val
rationales let the diagnostics measure a rationale-reading posterior given the gold rationale (the
oracle); no prompt ever shows it.

Why latent slots should matter: the answer is one token, produced right after the prompt, so
everything the model computes must fit in its few layers at the last prompt position. The
two-step subtasks have an intermediate result that is not the answer (a colour, a period); k
latent slots give the model k more positions, and AMVL's prior a place to hold that intermediate
result before the answer is read. One-step subtasks are controls: latents should change nothing
there. IQ_Test's majority-colour shortcut makes runs that fall back on it visible (period-3
questions at chance). A leaking posterior can write the answer itself into Z: with 2-4 options,
that costs at most log 4 nats, which small KL weights do not stop (docs/METHOD.md section 5b).

Targets are "(A) <option text>" by default (`model.answer_format`): with a bare "(A)" the small
model forgets which letter it read, and no posterior can see the answer.

Measured with "(A)" targets (2 layers, width 64, 84-pixel images, all six subtasks mixed,
batch 16, `amvl` objective; held-out accuracy at steps 500/1000/2000/3000): Counting
88/100/100/100, IQ_Test 76/77/100/100, Relative_Depth 50/50/100/100, Visual_Similarity
50/42/51/100, Jigsaw 50/50/50/62, Spatial_Relation 50 throughout. Spatial_Relation stays at chance: the
vision tower has no absolute position embedding, so reading a column from pixels is slow to
learn from scratch (a tiny model learned it only when the background encoded the column).
Counting with shuffled number options also stayed at chance: matching a count to the letter that
holds it is a second step the small model did not find in 1,000 steps.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from PIL import Image

from amvl.data.blink import blink_prompt, letter

CELL = 28
BACKGROUND = (235, 235, 235)
COLORS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60)}


def draw_cells(
    image_size: int, cells: dict[tuple[int, int], tuple[int, int, int]], margins: dict | None = None
) -> Image.Image:
    """An image with a filled square in each given (row, col) cell, 2 pixels in from its edges
    unless `margins` gives that cell another margin."""
    pixels = np.full((image_size, image_size, 3), BACKGROUND, dtype=np.uint8)
    for (row, col), color in cells.items():
        margin = (margins or {}).get((row, col), 2)
        top, left = row * CELL + margin, col * CELL + margin
        pixels[top : top + CELL - 2 * margin, left : left + CELL - 2 * margin] = color
    return Image.fromarray(pixels)


def filled(image_size: int, color: tuple[int, int, int]) -> Image.Image:
    return Image.fromarray(np.full((image_size, image_size, 3), color, dtype=np.uint8))


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
    far = {
        cell: palette[(palette.index(c) + 1 + rng.integers(len(palette) - 1)) % len(palette)]
        for cell, c in reference.items()
    }
    candidates = [close, far] if answer_index == 0 else [far, close]
    return dict(
        question="Given three similar but different images, take the first image as reference. "
        "Can you tell which one of the latter two images is most similar to the first one?",
        choices=["The second image", "The third image"],
        images=[draw_cells(image_size, c) for c in (reference, *candidates)],
        explanation=f"The {'second' if answer_index == 0 else 'third'} image differs from the reference in one cell;"
        " the other recolours every square.",
    )


def relative_depth(rng, image_size, answer_index):
    grid = image_size // CELL
    near, far_cell = random_cells(rng, grid, 2)
    closer = ["red", "blue"][answer_index]
    other = "blue" if closer == "red" else "red"
    cells = {near: COLORS[closer], far_cell: COLORS[other]}
    return dict(
        question="Which square is closer to the camera?",
        choices=["the red square", "the blue square"],
        images=[draw_cells(image_size, cells, margins={near: 1, far_cell: 9})],  # size is the depth cue
        explanation=f"The {closer} square looks larger, so it is closer.",
    )


def jigsaw(rng, image_size, answer_index):
    """Rows are single-coloured; the missing corner takes its row's colour (find it, then match)."""
    grid = image_size // CELL
    names = list(COLORS)
    row_colors = [names[rng.integers(len(names))] for _ in range(grid)]
    cells = {(r, c): COLORS[row_colors[r]] for r in range(grid) for c in range(grid)}
    del cells[(grid - 1, grid - 1)]
    missing = row_colors[-1]
    wrong = names[(names.index(missing) + 1 + rng.integers(len(names) - 1)) % len(names)]
    candidates = [missing, wrong] if answer_index == 0 else [wrong, missing]
    return dict(
        question="Given the first image with the lower right corner missing, can you tell which one of the "
        "second image or the third image is the missing part?",
        choices=["The second image", "The third image"],
        images=[draw_cells(image_size, cells)] + [filled(image_size, COLORS[c]) for c in candidates],
        explanation=f"Every row has one colour; the bottom row is {missing}, so the missing part is {missing}.",
    )


def iq_test(rng, image_size, answer_index):
    """Cells in reading order repeat a colour cycle of length 2 or 3; which colour fills the last?

    Two steps: find the period, then extrapolate. Majority colour is a shortcut that holds for
    period 2 and fails for period 3 (the answer is then the rarest visible colour).
    """
    grid = image_size // CELL
    names = list(COLORS)
    last = grid * grid - 1
    period = int(rng.integers(2, 4))
    cycle = [names[i] for i in rng.permutation(len(names))[:period]]
    shift = (cycle.index(names[answer_index]) - last) % period if names[answer_index] in cycle else None
    if shift is None:  # make the answer part of the cycle
        cycle[last % period] = names[answer_index]
        shift = 0
    sequence = [cycle[(i + shift) % period] for i in range(last)]
    cells = {(i // grid, i % grid): COLORS[c] for i, c in enumerate(sequence)}
    return dict(
        question="The squares, read row by row, follow a repeating pattern. Which colour should the last square have?",
        choices=list(names),
        images=[draw_cells(image_size, cells)],
        explanation=f"The colours repeat every {period} squares, so the last one is {names[answer_index]}.",
    )


# Pointer chasing: nine cells of a 3x3 grid, each showing a key colour in its left half and the
# colour it points to in its right half, so following a pointer is finding a cell by its content.
# The grey cell is the start. (A first design pointed to cells by position, colour j -> cell j;
# the small model never learned to find a cell by position, the vision tower having no absolute
# position embedding. A second named the start colour in the question; matching a word to a
# colour in the image, and the image back to a word, was not learned from answers in 1,500 steps.)
POINTER_COLORS = {
    "red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (230, 200, 40),
    "magenta": (200, 50, 200), "cyan": (40, 200, 210), "orange": (240, 130, 30), "black": (30, 30, 30),
}  # fmt: skip
POINTER_GRID, GREY = 3, (150, 150, 150)


def pointer_chasing(rng, image_size, answer_index, hops: int):
    """The grey cell points to a colour, and each of the eight colours to another (a random map
    without fixed points), drawn as nine shuffled "key | target" cells. Start at grey and follow
    `hops` arrows: which colour is reached? One hop is reading the grey cell (the curriculum's
    first step); each further hop finds the cell whose key is the colour just read. The options
    are the eight colours in a fixed order, so the answer's letter is its colour (no second step
    of finding which letter holds it, which a small model does not learn: synthetic Counting's
    note). The colours passed on the way are intermediate results that are not the answer (the
    chain visits distinct colours, so stopping a hop short is wrong). The rationale lists the
    hops before the last, so it never names the answer (a posterior reading it learns no shortcut)."""
    if image_size < POINTER_GRID * CELL:
        raise ValueError(f"pointer chasing needs images of at least {POINTER_GRID * CELL} pixels")
    names = list(POINTER_COLORS)
    while True:
        target = [int(rng.integers(len(names) - 1)) for _ in names]
        target = [t + (t >= key) for key, t in enumerate(target)]  # never itself
        chain = [int(rng.integers(len(names)))]  # what grey points to
        for _ in range(hops - 1):
            chain.append(target[chain[-1]])
        if len(set(chain)) == len(chain) and chain[-1] == answer_index:
            break
    arrows = [(GREY, POINTER_COLORS[names[chain[0]]])]
    arrows += [(POINTER_COLORS[names[key]], POINTER_COLORS[names[target[key]]]) for key in range(len(names))]
    pixels = np.full((image_size, image_size, 3), BACKGROUND, dtype=np.uint8)
    half, margin = CELL // 2, 2
    for place, (key, points_to) in zip(rng.permutation(POINTER_GRID**2), arrows):
        top, left = (place // POINTER_GRID) * CELL + margin, (place % POINTER_GRID) * CELL
        pixels[top : top + CELL - 2 * margin, left + margin : left + half] = key
        pixels[top : top + CELL - 2 * margin, left + half : left + CELL - margin] = points_to
    passed = ["grey"] + [names[c] for c in chain]
    return dict(
        question=f"Start at the grey cell and follow the arrows {hops} time{'s' if hops > 1 else ''}. "
        "Which colour do you reach?",
        choices=names,
        images=[Image.fromarray(pixels)],
        explanation=" ".join(f"{a} points to {b}." for a, b in zip(passed, passed[1:-1])),
    )


# name -> (generator, number of options)
SUBTASKS: dict[str, tuple[Callable, int]] = {
    "Counting": (counting, 4),
    "Spatial_Relation": (spatial_relation, 2),
    "Visual_Similarity": (visual_similarity, 2),
    "Relative_Depth": (relative_depth, 2),
    "Jigsaw": (jigsaw, 2),
    "IQ_Test": (iq_test, 3),
    **{f"Pointer_{hops}hop": (functools.partial(pointer_chasing, hops=hops), 8) for hops in (1, 2, 3, 4)},
}


# Each subtask's random stream is its place here: the first six in sorted order, as they were
# numbered before pointer chasing came, so adding subtasks leaves the others' data unchanged.
STREAMS = sorted(list(SUBTASKS)[:6]) + list(SUBTASKS)[6:]


def generate(subtask: str, split: str, size: int, seed: int, image_size: int) -> list[dict]:
    """`size` rows of one subtask; answer letters cycle so they are balanced."""
    make, options = SUBTASKS[subtask]
    stream = [seed, STREAMS.index(subtask), ["train", "val"].index(split)]
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
                explanation=item["explanation"] if split == "train" or subtask.startswith("Pointer") else "",
            )
        )
    return rows
