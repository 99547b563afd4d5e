"""extract_choice: BLINK's official extraction order, then the offline fallback."""

import pytest

from amvl.evaluation import extract_choice
from amvl.evaluation.extract import extract_choice_route

TWO = ["the red square", "the blue square"]
FOUR = ["1", "2", "3", "4"]


@pytest.mark.parametrize(
    "response, choices, expected, route",
    [
        # official rules: bare letter, bare "(X)", exactly one "(X)" token, last paragraph decides
        ("B", TWO, "(B)", "direct"),
        ("(A)", TWO, "(A)", "direct"),
        ("  (B)\n", TWO, "(B)", "direct"),
        ("I think (B) is right", TWO, "(B)", "direct"),
        ("(A) looks close, but (B) fits.\n\nSo the answer is (B)", TWO, "(B)", "direct"),
        ("(C) is my answer", FOUR, "(C)", "direct"),
        # tricky ones
        ("The answer is (B).", TWO, "(B)", "fallback"),  # "(B)." is not a whitespace token
        ("Either (A) or (B)", TWO, "(Z)", "fallback"),  # two different letters, no deciding paragraph
        ("Either (A) or (B).", TWO, "(A)", "direct"),  # officially so: "(B)." is no token, "(A)" the only one
        ("(A) or (B)\n\n(A) or (B)", TWO, "(Z)", "fallback"),
        ("E", TWO, "(Z)", "direct"),  # a letter outside the choices
        ("(C)", TWO, "(Z)", "direct"),
        ("It must be (D) because", TWO, "(Z)", "fallback"),
        ("The blue square is closer.", TWO, "(B)", "fallback"),  # option text only
        ("Both the red square and the blue square", TWO, "(Z)", "fallback"),
        ("", TWO, "(Z)", "fallback"),
        ("I count 3 squares", FOUR, "(C)", "fallback"),
        ("I count 13 squares", FOUR, "(Z)", "fallback"),  # "3" inside "13" is not the option
    ],
)
def test_extract_choice(response, choices, expected, route):
    assert extract_choice(response, choices) == expected
    assert extract_choice_route(response, choices) == (expected, route)
