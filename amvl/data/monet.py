"""Adapter: a local copy of Monet-SFT-125K (the paper's training sources) -> training records.

Expected layout (the Hugging Face dataset repo NOVAglow646/Monet-SFT-125K, downloaded by you):

    <root>/<Subset>/train.json      Subset in SUBSETS: a JSON list of samples
    <root>/<Subset>/images/...      image files, referenced by path

Each sample is a chat, as Monet's own training code reads it:

    {"metadata": {"sample_id": 17, ...},
     "data": [{"role": "system" | "user" | "assistant",
               "content": [{"type": "image", "image": "images/17_0.jpg"},
                           {"type": "text", "text": "..."}]}]}

Mapping to a record (amvl/data/records.py): the user turns' images are the inputs and their
text the question; the assistant's text is the rationale, and its last `\\boxed{...}` (else its
last line) the answer. The assistant's intermediate images (Monet's visual thoughts) are dropped:
AMVL reasons in its own latent slots instead. Image paths are resolved against the subset folder,
then the root. Samples that BLINK's schema cannot hold (no input image, more than four) are
skipped and counted; a sample that is malformed stops with its file and position.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from amvl.data.blink import IMAGE_COLUMNS
from amvl.errors import UserError
from amvl.progress import Progress

SUBSETS = (
    "Visual_CoT", "CogCoM", "ReFocus", "Zebra_CoT_count", "Zebra_CoT_visual_search", "Zebra_CoT_geometry",
)  # fmt: skip
HOW_TO_GET = "download the Hugging Face dataset NOVAglow646/Monet-SFT-125K there (<root>/<Subset>/train.json)"
MARKUP = re.compile(r"</?(abs_vis_token|observation)>")  # Monet's latent-image and observation tags
SPACE = re.compile(r"[ \t\n\r]*")
BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def is_monet_root(path: Path) -> bool:
    return Path(path).is_dir() and any((Path(path) / s / "train.json").exists() for s in SUBSETS)


def subset_files(root: Path, subsets: list[str]) -> dict[str, Path]:
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise UserError(f"data.train_subsets: unknown subset {unknown[0]!r} (known: {', '.join(SUBSETS)})")
    files = {s: Path(root) / s / "train.json" for s in subsets or SUBSETS}
    present = {s: f for s, f in files.items() if f.exists()}
    missing = [str(f) for s, f in files.items() if s in subsets and not f.exists()]
    if missing or not present:
        raise UserError(f"{missing[0] if missing else root}: not found; {HOW_TO_GET}")
    return present


def answer_of(rationale: str) -> str:
    boxed = BOXED.findall(rationale)
    if boxed:
        return boxed[-1].strip()
    lines = [line.strip() for line in rationale.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def to_record(sample, subset: str, folder: Path, root: Path, where: str) -> tuple[dict | None, str]:
    """(record, "") or (None, why it was skipped); UserError for malformed samples."""
    if not isinstance(sample, dict) or not isinstance(sample.get("data"), list):
        raise UserError(f"{where}: expected an object with a 'data' list of chat turns")
    images, question, rationale = [], [], []
    for turn in sample["data"]:
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), list):
            raise UserError(f"{where}: every turn needs a 'role' and a 'content' list")
        for part in turn["content"]:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("image", "text"):
                raise UserError(f"{where}: content parts must be {{type: image|text}}, got {part!r:.60}")
            if turn.get("role") == "user" and kind == "image":
                path = Path(part.get("image") or "")
                images.append(str(folder / path if (folder / path).exists() else root / path))
            elif turn.get("role") == "user":
                question.append(part.get("text", ""))
            elif turn.get("role") == "assistant" and kind == "text":
                rationale.append(MARKUP.sub("", part.get("text", "")))
    rationale_text = "\n".join(rationale).strip()
    if not images:
        return None, "no input image"
    if len(images) > len(IMAGE_COLUMNS):
        return None, f"more than {len(IMAGE_COLUMNS)} input images"
    answer = answer_of(rationale_text)
    if not answer:
        return None, "no answer text"
    sample_id = (sample.get("metadata") or {}).get("sample_id", where.rsplit(" ", 1)[-1])
    record = {
        "id": f"{subset}-{sample_id}",
        "images": images,
        "question": "\n".join(question).strip(),
        "answer": answer,
        "rationale": rationale_text,
        "source": subset,
    }
    return record, ""


def json_items(file: Path, chunk: int = 1 << 20) -> Iterator[tuple[object, int]]:
    """(item, characters read so far) for each item of the JSON list in `file`, read a chunk at a
    time: a subset's train.json is hundreds of MB, and parsed whole it would hold every sample at
    once. A syntax error is a UserError naming the file and line."""
    decoder = json.JSONDecoder()
    with open(file) as f:
        text, at, line, dropped, ended = "", 0, 1, 0, False

        def fill() -> None:  # keep what is not parsed yet, read the next chunk
            nonlocal text, at, line, dropped, ended
            line, dropped = line + text.count("\n", 0, at), dropped + at
            more = f.read(chunk)
            text, at, ended = text[at:] + more, 0, not more

        def peek() -> str:  # the next character that is not white space ("" at the end of the file)
            nonlocal at
            at = SPACE.match(text, at).end()
            while at == len(text) and not ended:
                fill()
                at = SPACE.match(text, at).end()
            return text[at : at + 1]

        def fail(message: str, position: int) -> UserError:
            return UserError(f"{file}: not valid JSON ({message}, line {line + text.count(chr(10), 0, position)})")

        if peek() != "[":
            raise UserError(f"{file}: expected a JSON list of samples")
        at += 1
        char = peek()
        while char != "]":
            while True:  # an item the chunk cuts off is parsed again with the next chunk
                try:
                    item, end = decoder.raw_decode(text, at)
                    # a number ("2" of "2.5") is whole only where something else follows it
                    if ended or end < len(text) and (text[at] in '{["' or text[end] in " \t\r\n,]"):
                        break
                except json.JSONDecodeError as e:
                    if ended:
                        raise fail(e.msg, e.pos) from None
                fill()
            at = end
            yield item, dropped + at
            char = peek()
            if char not in ",]":
                raise fail("Expecting ',' delimiter", at)
            if char == ",":
                at += 1
                peek()
        at += 1
        if peek():
            raise fail("Extra data", at)


def iter_monet(root: Path, subsets: list[str] | None = None) -> Iterator[tuple[dict, str]]:
    """(record, where) for every usable sample, one at a time (images stay paths); prints how many
    were skipped and why."""
    root = Path(root)
    skipped = Counter()
    for subset, file in subset_files(root, list(subsets or [])).items():
        with Progress(f"reading {subset}", max(1, file.stat().st_size >> 10), "KB") as progress:
            for number, (sample, read) in enumerate(json_items(file)):
                where = f"{file}: sample {number}"
                record, why = to_record(sample, subset, file.parent, root, where)
                if record is None:
                    skipped[f"{subset}: {why}"] += 1
                else:
                    yield record, where
                if read >> 10 != progress.done:  # KB of the file read (characters: about its bytes)
                    progress.update(read >> 10)
    for reason, count in sorted(skipped.items()):
        print(f"Monet-SFT-125K: skipped {count} samples ({reason})")
