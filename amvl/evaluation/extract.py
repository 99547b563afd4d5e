"""Turn a generated response into a choice, in the order BLINK's official evaluation uses.

Official deterministic steps (route "direct"):
1. The whole response is a bare letter ("B") or a bare "(B)": that choice.
2. Exactly one valid "(X)" among the response's whitespace-separated tokens: that choice;
   the last paragraph (after the final blank line) decides when it holds exactly one and the
   whole response holds several.

Officially a GPT model then matches the response to an option. Offline, rules 3-9 stand in for
it (route "fallback"). They read the response with special tokens ("<s>", "<|im_end|>"),
markdown "*" and zero-width characters removed, whitespace made plain spaces and full-width
forms folded ("（B）" is "(B)"):
3. A letter opening the response, closed by a bracket, "." or ":" or the line's end: "B)",
   "(B", "[B]", "B.", "**B**", "C) About the same", "B. the blue square", "A\nThe reason...".
4. A letter after an answer word: "the answer is B", "Answer: (C).", "I choose B", "Final
   answer: B". Two different letters declared give "(Z)".
5. A letter after "option" or "choice": "option D", "(option B)", "choice B".
6. A letter marked anywhere: "(B)", "[B]", '"B"', "B)" opening a line.
7. An option's text as a whole phrase, any case, "the" optional: "Box B more accurately...",
   "point D on the second image" (options "Point A".."Point D"), "Second image.". An option
   named only inside a longer named one does not count ("right" inside "upper right").
   A response that is only an option word in Chinese or Japanese ("左", "はい。") names that
   option ("left", "yes"): FOREIGN_OPTION_WORDS.
8. A standalone capital letter: "the corresponding point is labeled A on the right".
9. Otherwise "(Z)", unanswered and counted wrong.
When rule 5, 6, 7 or 8 finds several choices, the one it finds alone in the first of these parts
decides: the words after an answer word ("I would select Point C"), the first sentence, the
last paragraph, the last sentence; if none does, the next rule is tried. Rules 7-8
are skipped for responses that say they cannot tell ("not possible to determine", "neither"):
the options they name are the ones they could not decide between. A letter followed by "or B",
", B" and the like names alternatives, not an answer, and a capital "A" opening a sentence
before a lowercase word ("A cat is on the left") is the article.

Where this still departs from the official matcher: paraphrased options ("point A appears
closer" for "A is closer", "three" for "3"), negations ("not B", "B is wrong, so A"), answers
given only as reasoning ("the handle of the spoon"), answers in other languages beyond a
one-word option (a sentence in Chinese is not read: a word inside it may be negated), and responses
declaring or listing several letters (officially the model may still pick one). Valid choices
are "(A)" up to the row's number of options; a letter outside them ("E" for two options) gives
"(Z)" here, the letter itself officially; both count as wrong.
"""

from __future__ import annotations

import re
import unicodedata

from amvl.data.blink import letter

UNANSWERED = "(Z)"
SPECIAL_TOKEN = re.compile(r"<\|[^<>|]{1,40}\|>|</?[A-Za-z_]{1,20}>")
# A letter followed by "or (B)", ", B" etc. names alternatives, not an answer.
NOT_ALTERNATIVE = r"(?![^\S\n]*(?:or|and|,|/)[^\S\n]*[(\[]?[A-E](?!\w))"
LEADING = re.compile(rf"[(\[]?([A-E])(?:[)\]]|[.:](?!\w)|[^\S\n]*(?:\n|$)){NOT_ALTERNATIVE}")
# Answer words in any case, then the letter in capitals: "The answer is (B)", "I choose option C".
ANSWER_WORD = r"(?i:answer(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?|choose|chose|select|pick|go\s+with)"
AFTER_WORD = rf"\s*[:=-]?\s*(?:(?i:option|choice)\s*)?[(\[\"'“‘]?\s*([A-E])(?![\w'’-]){NOT_ALTERNATIVE}"
ANSWERED = re.compile(rf"\b{ANSWER_WORD}{AFTER_WORD}")
OPTIONED = re.compile(rf"\b(?i:option|choice){AFTER_WORD}")
AFTER_ANSWER_WORD = re.compile(rf"\b{ANSWER_WORD}[^.\n]*")
# Balanced marks only: the "D)" in "(Points C and D)" is no answer.
MARKED = re.compile(r"\(([A-E])\)|\[([A-E])\]|[\"'“‘]([A-E])[\"'”’]|^([A-E])\)", re.MULTILINE)
STANDALONE = re.compile(r"(?<![\w'’-])([A-E])(?![\w'’-])")
CANNOT_TELL = re.compile(
    r"(?i)\b(?:not possible|cannot|can't|can not|unable|impossible)(?: to)?(?: \w+ly)? (?:determine|tell|say|be determined)"
    r"|\bneither\b|\bI'm sorry\b"
)
# BLINK's one-word options as models answer them in other languages. Of the 19 models whose val
# responses BLINK saved, only flamingov2 answers so: "左" for left (133 questions, all of
# Multi-view_Reasoning, each mapped to "left" by the official GPT matcher) and "はい" for yes (7; the
# matcher mapped 3 to yes, 4 to nothing). Chinese (simplified and traditional) and Japanese, then;
# a whole response only, punctuation aside.
FOREIGN_OPTION_WORDS = {
    "left": ("左", "左边", "左邊", "左側", "向左", "ひだり"),
    "right": ("右", "右边", "右邊", "右側", "向右", "みぎ"),
    "yes": ("是", "是的", "对", "對", "はい", "ええ"),
    "no": ("否", "不", "不是", "不对", "不對", "いいえ"),
    "above": ("上", "上面", "上方", "上边", "上邊"),
    "below": ("下", "下面", "下方", "下边", "下邊"),
}
WORD_OF = {foreign: word for word, foreigns in FOREIGN_OPTION_WORDS.items() for foreign in foreigns}
# What follows an article "A": a lowercase word, though not a verb or conjunction ("A is darker").
ARTICLE_NOUN = re.compile(r"\s+(?!is\b|because\b|since\b)[a-z]")


def clean(response: str) -> str:
    text = unicodedata.normalize("NFKC", response)  # "（B）" -> "(B)", non-breaking space -> space
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")  # zero-width marks
    text = SPECIAL_TOKEN.sub(" ", text).replace("*", "")
    return re.sub(r"[^\S\n]+", " ", text).strip()


def is_article(text: str, start: int, end: int) -> bool:
    before = text[:start].rstrip(" \"'(“‘")
    opens_sentence = not before or before[-1] in ".!?:\n"
    return text[start:end] == "A" and opens_sentence and bool(ARTICLE_NOUN.match(text, end))


def letters(pattern: re.Pattern, text: str, valid: list[str]) -> set[str]:
    """The distinct valid letters `pattern` finds outside articles, as "(X)"."""
    found = set()
    for match in pattern.finditer(text):
        group = next(i for i in range(1, pattern.groups + 1) if match.group(i))
        if not is_article(text, match.start(group), match.end(group)):
            found.add(f"({match.group(group)})")
    return found & set(valid)


def option_pattern(option: str) -> re.Pattern:
    words = re.sub(r"^the\s+", "", option.strip().lower())
    return re.compile(rf"(?<!\w)(?:the\s+)?{re.escape(words)}(?!\w)")


def named_options(text: str, choices: list[str], valid: list[str]) -> set[str]:
    """The options whose text the response names, less those named only inside another's."""
    lowered = text.lower()
    spans = {c: [m.span() for m in option_pattern(o).finditer(lowered)] for c, o in zip(valid, choices) if o.strip()}
    others = {c: [span for d, s in spans.items() if d != c for span in s] for c in spans}

    def inside_other(x: int, y: int, c: str) -> bool:
        return any(a <= x and y <= b and (a, b) != (x, y) for a, b in others[c])

    return {c for c, own in spans.items() if own and not all(inside_other(x, y, c) for x, y in own)}


def foreign_option(text: str, choices: list[str], valid: list[str]) -> str | None:
    """The option a whole response names by its word in Chinese or Japanese ("左" -> "left")."""
    word = WORD_OF.get(re.sub(r"[\W_]+", "", text))
    named = [c for c, o in zip(valid, choices) if word and re.sub(r"^the\s+", "", o.strip().lower()) == word]
    return named[0] if len(named) == 1 else None


def parts(text: str) -> list[str]:
    """Where a response states its answer, most trusted first: after answer words, its first
    sentence, its last paragraph, its last sentence."""
    after_answer_words = " ".join(m.group(0) for m in AFTER_ANSWER_WORD.finditer(text))
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()] or [""]
    return [after_answer_words, sentences[0], text.split("\n\n")[-1], sentences[-1]]


def the_one(find, text: str) -> str | None:
    """The one choice `find` finds in text; of several, the one it finds alone in a part."""
    found = find(text)
    if len(found) > 1:
        found = next((f for f in (find(part) & found for part in parts(text)) if len(f) == 1), found)
    return next(iter(found)) if len(found) == 1 else None


def fallback(response: str, choices: list[str], valid: list[str]) -> str:
    """Rules 3-9 of the module docstring."""
    text = clean(response)
    leading = LEADING.match(text)
    if leading and f"({leading.group(1)})" in valid:
        return f"({leading.group(1)})"
    foreign = foreign_option(text, choices, valid)
    if foreign:
        return foreign
    declared = letters(ANSWERED, text, valid)
    if declared:  # two letters declared ("the answer is A... the answer is B") is no answer
        return declared.pop() if len(declared) == 1 else UNANSWERED
    finders = [lambda t, p=p: letters(p, t, valid) for p in (OPTIONED, MARKED)]
    if not CANNOT_TELL.search(text):
        finders += [lambda t: named_options(t, choices, valid), lambda t: letters(STANDALONE, t, valid)]
    return next((c for find in finders if (c := the_one(find, text))), UNANSWERED)


def extract_choice_route(response: str, choices: list[str]) -> tuple[str, str]:
    """(choice, route): route is "direct" (rules 1-2) or "fallback" (rules 3-9)."""
    valid = [letter(i) for i in range(len(choices))]
    text = response.strip()
    if text in valid or f"({text})" in valid:
        return (text if text in valid else f"({text})"), "direct"
    if re.fullmatch(r"[A-E]|\([A-E]\)", text):  # officially taken as is; outside the options, so wrong
        return UNANSWERED, "direct"
    anywhere = {token for token in text.split() if token in valid}
    last_paragraph = {token for token in text.split("\n\n")[-1].split() if token in valid}
    if len(last_paragraph) == 1 and anywhere:
        return last_paragraph.pop(), "direct"
    if len(anywhere) == 1:
        return anywhere.pop(), "direct"
    return fallback(response, choices, valid), "fallback"


def extract_choice(response: str, choices: list[str]) -> str:
    """The choice a response gives, "(A)".."(E)", or "(Z)" when it gives none (module docstring)."""
    return extract_choice_route(response, choices)[0]
