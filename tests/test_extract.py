"""extract_choice: BLINK's official extraction order, then the offline fallback."""

import pytest

from amvl.evaluation import extract_choice
from amvl.evaluation.extract import extract_choice_route

TWO = ["the red square", "the blue square"]
FOUR = ["1", "2", "3", "4"]
# Options as BLINK's subtasks write them.
LATTER_IMAGES = ["the second image", "the third image"]  # Art Style, Jigsaw, Visual Similarity
IMAGES = ["the first image", "the second image"]
POINTS = ["Point A", "Point B", "Point C", "Point D"]  # the correspondence subtasks
BOXES = ["Box A", "Box B"]  # Object Localization
DIRECTIONS = ["left", "right"]  # Multi-view Reasoning
REFLECTANCE = ["A is darker", "B is darker", "About the same"]
DEPTH = ["A is closer", "B is closer"]
PICTURES = ["picture A", "picture B", "picture C", "picture D"]  # IQ Test
YES_NO = ["yes", "no"]  # Spatial Relation
COMPARED = (
    "Let me compare them.\n\nThe first image is staged. The second image is candid.\n\n"
    "Overall, the second image is more likely real."
)


def check(response, choices, expected, route):
    assert extract_choice(response, choices) == expected
    assert extract_choice_route(response, choices) == (expected, route)


@pytest.mark.parametrize(
    "response, choices, expected, route",
    [
        # official rules: bare letter, bare "(X)", exactly one "(X)" token, last paragraph decides
        ("B", TWO, "(B)", "direct"),
        ("(A)", TWO, "(A)", "direct"),
        ("  (B)\n", TWO, "(B)", "direct"),
        ("\xa0B", TWO, "(B)", "direct"),  # str.strip() takes the non-breaking space
        ("I think (B) is right", TWO, "(B)", "direct"),
        ("(A) looks close, but (B) fits.\n\nSo the answer is (B)", TWO, "(B)", "direct"),
        ("(C) is my answer", FOUR, "(C)", "direct"),
        ("Answer: (C)", POINTS, "(C)", "direct"),  # "(C)" is a whitespace token
        ("<s> (A) A is darker", REFLECTANCE, "(A)", "direct"),
        ("Either (A) or (B).", TWO, "(A)", "direct"),  # officially so: "(B)." is no token, "(A)" the only one
        ("E", TWO, "(Z)", "direct"),  # a letter outside the choices
        ("(C)", TWO, "(Z)", "direct"),
    ],
)
def test_official_steps(response, choices, expected, route):
    check(response, choices, expected, route)


@pytest.mark.parametrize(
    "response, choices, expected",
    [
        # stray tokens around a letter
        ("<s> A", LATTER_IMAGES, "(A)"),
        ("<s> B</s>", YES_NO, "(B)"),
        ("B<|im_end|>", TWO, "(B)"),
        ("\u200bB", TWO, "(B)"),  # zero-width space, which str.strip() keeps
        ("（B）", LATTER_IMAGES, "(B)"),  # full-width brackets
        ("B)", TWO, "(B)"),
        ("(B", TWO, "(B)"),
        ("B.", TWO, "(B)"),
        ("B:", TWO, "(B)"),
        ("**B**", TWO, "(B)"),
        ("[B]", TWO, "(B)"),
        ("C) About the same", REFLECTANCE, "(C)"),
        ("C About the same", REFLECTANCE, "(C)"),
        ("B. the blue square", TWO, "(B)"),
        ("A\nThe second image shares the same style as the reference image.", LATTER_IMAGES, "(A)"),
        ("A is", DEPTH, "(A)"),  # cut short: "A is" is no article
        # declarations
        ("The answer is B", TWO, "(B)"),
        ("The correct answer is C.", PICTURES, "(C)"),
        ("Answer: (C).", POINTS, "(C)"),
        ("answer: C", POINTS, "(C)"),
        ("The answer is B, because it is nearer to the camera.", DEPTH, "(B)"),
        ("Looking at the red-circled points, option D matches the tip of the handle.", POINTS, "(D)"),
        ("I would go with choice B.", TWO, "(B)"),
        ("The camera is moving to the right (option B)", DIRECTIONS, "(B)"),
        ("Option A is too loose around the cat, while option B fits it.\n\nOption B is tighter.", BOXES, "(B)"),
        ("The left point is on the wall.\nI choose B", DEPTH, "(B)"),
        ("Both points are on a white wall.\n\nFinal answer: B", REFLECTANCE, "(B)"),
        # letters marked anywhere
        ("The answer is (B).", TWO, "(B)"),  # "(B)." is not a whitespace token
        ('The point labeled "C" in the second image matches the reference point.', POINTS, "(C)"),
        ("Points A, B and C are on the handle.\nTherefore the point is (D).", POINTS, "(D)"),
        # references the options themselves use
        ("point D on the second image", POINTS, "(D)"),
        ("Box B more accurately localizes the car", BOXES, "(B)"),
        ("Box B more accurately localizes the car. Box A is too large.", BOXES, "(B)"),  # first sentence
        ("The second image", IMAGES, "(B)"),
        ("Second image.", LATTER_IMAGES, "(A)"),  # "the" is optional
        ("The blue square is closer.", TWO, "(B)"),
        ("I count 3 squares", FOUR, "(C)"),
        ("The object sits in the upper right corner.", ["right", "upper right"], "(B)"),  # longest covers
        ("The first image looks staged, so I would choose the second image.", IMAGES, "(B)"),  # after "choose"
        (COMPARED, IMAGES, "(B)"),  # the last paragraph decides
        ("The corresponding point is labeled A on the right image.", POINTS, "(A)"),  # standalone letter
        ("B is darker than A.", REFLECTANCE, "(B)"),
        # a one-word answer in Chinese or Japanese names the option (flamingov2's "左", "はい")
        ("左", ["left", "right"], "(A)"),
        ("右边。", ["left", "right"], "(B)"),
        ("はい", ["yes", "no"], "(A)"),
        ("いいえ", ["yes", "no"], "(B)"),
        ("下方", ["above", "below"], "(B)"),
    ],
)
def test_fallback_finds(response, choices, expected):
    check(response, choices, expected, "fallback")


@pytest.mark.parametrize(
    "response, choices",
    [
        ("", TWO),
        ("   \n", TWO),
        ("I cannot tell which square is closer.", TWO),
        ("It is not possible to determine whether the second image or the third image fits.", LATTER_IMAGES),
        ("Neither the second nor the third image shares its style.", LATTER_IMAGES),
        # the English article and pronoun are no letters
        ("A cat is on the left.", TWO),
        ("A dog sits between the squares.", TWO),
        ("I think it is hard to say.", TWO),
        # ambiguous: two letters, or both options, equally
        ("Either (A) or (B)", TWO),  # two different letters, no deciding paragraph
        ("(A) or (B)\n\n(A) or (B)", TWO),
        ("The answer is A or B", TWO),
        ("The answer is A. No, the answer is B.", TWO),
        ("A, B, C and D are the four options.", POINTS),
        ("Both the red square and the blue square", TWO),
        # letters outside the options, and numbers inside numbers
        ("E)", TWO),
        ("It must be (D) because", TWO),
        ("I count 13 squares", FOUR),  # "3" inside "13" is not the option
        # a foreign word only as the whole answer, and only for an option that is that word
        ("我认为是左边", ["left", "right"]),
        ("左", ["yes", "no"]),
    ],
)
def test_fallback_no_answer(response, choices):
    check(response, choices, "(Z)", "fallback")
