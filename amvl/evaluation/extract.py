"""Turn a generated response into a choice, in the order BLINK's official evaluation uses.

1. The whole response is a bare letter ("B") or a bare "(B)": that choice.
2. Exactly one valid "(X)" among the response's whitespace-separated tokens: that choice;
   the last paragraph (after the final blank line) decides when it holds exactly one and the
   whole response holds several.
3. Otherwise the official evaluation asks a GPT model to match the response to an option.
   Offline we do this deterministically instead: exactly one valid "(X)" anywhere in the text
   ("The answer is (B)."), else the one option whose text appears in the response, else "(Z)"
   (unanswered, counted wrong). The fallback rate is reported per subtask.

Valid choices are "(A)" up to the row's number of options. One deviation: a bare letter
outside them ("E" for two options) gives "(Z)" here, the letter itself officially; both count
as wrong.
"""

from __future__ import annotations

import re

from amvl.data.blink import letter

UNANSWERED = "(Z)"


def extract_choice_route(response: str, choices: list[str]) -> tuple[str, str]:
    """(choice, route): route is "direct" (rules 1-2) or "fallback" (rule 3)."""
    valid = [letter(i) for i in range(len(choices))]
    text = response.strip()
    if text in valid or f"({text})" in valid:
        return (text if text in valid else f"({text})"), "direct"
    if re.fullmatch(r"\(?[A-E]\)?", text):
        return UNANSWERED, "direct"
    anywhere = {token for token in text.split() if token in valid}
    last_paragraph = {token for token in text.split("\n\n")[-1].split() if token in valid}
    if len(last_paragraph) == 1 and anywhere:
        return last_paragraph.pop(), "direct"
    if len(anywhere) == 1:
        return anywhere.pop(), "direct"

    mentioned = {f"({x})" for x in re.findall(r"\(([A-E])\)", text)} & set(valid)
    if len(mentioned) == 1:
        return mentioned.pop(), "fallback"
    lowered = text.lower()
    named = [
        c for c, option in zip(valid, choices) if option and re.search(rf"\b{re.escape(option.lower())}\b", lowered)
    ]
    if len(named) == 1:
        return named[0], "fallback"
    return UNANSWERED, "fallback"


def extract_choice(response: str, choices: list[str]) -> str:
    """The choice a response gives, "(A)".."(E)", or "(Z)" when it gives none (module docstring)."""
    return extract_choice_route(response, choices)[0]
