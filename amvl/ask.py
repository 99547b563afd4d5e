"""`amvl ask`: one question to a model folder, and `amvl.load(folder).ask(images, question)`.

    import amvl
    model = amvl.load("models/default/amvl")   # written by `amvl convert`, or a Hugging Face folder
    print(model.ask(["a.png"], "Which square is red?", choices=["the left", "the right"]))

The question is asked as evaluation asks a benchmark's: the model's chat template over the images
then the prompt (BLINK's "Select from the following choices." with the options, where given),
latents from the prior's means, a greedy answer up to an end token. `latents=True` also reports
what each slot holds: the prior's sigma (its mean over the d dimensions) and, where the model has
a rationale readout, the tokens that readout names from the slot's latent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from amvl.data.blink import blink_prompt, letter
from amvl.data.collate import collate, encode
from amvl.errors import UserError
from amvl.evaluation.extract import extract_choice


@dataclass
class Slot:
    """What one latent slot holds, as the prior gives it for this question."""

    prior_sigma: float  # the prior's sigma, averaged over the slot's d dimensions
    readout: list[str] = field(default_factory=list)  # the rationale readout's top tokens, most likely first

    def __str__(self) -> str:
        words = f"  readout: {' | '.join(map(repr, self.readout))}" if self.readout else ""
        return f"prior sigma {self.prior_sigma:.3g}{words}"


@dataclass
class Answer:
    text: str  # what the model generated, end token excluded
    choice: str | None = None  # "(A)".. as BLINK's extraction reads the text, "(Z)" for none; None without choices
    slots: list[Slot] | None = None  # with latents=True and a model with latent slots

    def __str__(self) -> str:
        head = f"{self.choice} {self.text}" if self.choice else self.text
        slots = [f"slot {t + 1}: {slot}" for t, slot in enumerate(self.slots or [])]
        return "\n".join([head, *slots])


def open_image(image) -> Image.Image:
    """A PIL image, or the image at a path, as RGB; a UserError naming a path that is not one."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(Path(image)) as opened:
            return opened.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{image}: no such image file") from None
    except Exception as e:  # PIL raises many types for data that is not an image
        raise UserError(f"{image}: does not decode as an image ({type(e).__name__})") from None


class AskableModel:
    """A model folder loaded once, to ask questions of (`amvl.load`)."""

    def __init__(self, folder: Path, device: str = "cpu", dtype: torch.dtype | None = None):
        from amvl.model.backbone import load_processors
        from amvl.model.latent import LatentReasoner

        self.model = LatentReasoner.load(Path(folder), device, dtype).eval()
        self.tokenizer, self.image_processor = load_processors(Path(folder))

    @torch.no_grad()
    def ask(self, images, question: str, choices: list[str] | None = None, max_new_tokens: int = 64,
            latents: bool = False) -> Answer:  # fmt: skip
        """Answer `question` about `images` (paths or PIL images, in order); `choices`: the
        options, asked as BLINK asks them. See the module docstring."""
        images = [open_image(image) for image in ([images] if isinstance(images, (str, Path, Image.Image)) else images)]
        if not images:
            raise UserError("ask: give at least one image")
        choices = list(choices or [])
        row = {
            "idx": "ask", "sub_task": "ask", "images": images, "choices": choices,
            "prompt": blink_prompt(question, choices) if choices else question,
            "answer": letter(0) if choices else "-",  # a placeholder target: nothing is scored
        }  # fmt: skip
        batch = collate([encode(row, self.tokenizer, self.image_processor, self.model.cfg.answer_format)])
        text = self.tokenizer.decode(self.model.generate(batch, max_new_tokens)[0], skip_special_tokens=True)
        answer = Answer(text.strip(), extract_choice(text, choices) if choices else None)
        prior = self.model.think(batch).prior if latents else None  # the same prior generate read (tau 0)
        if prior is not None:
            answer.slots = self.slots(prior)
        return answer

    def slots(self, prior) -> list[Slot]:
        """Each slot's prior sigma and, with a rationale readout, the 5 tokens it names from the prior's mean."""
        sigma = prior.std[0].mean(-1).tolist()
        if not self.model.cfg.rationale_vocab:
            return [Slot(s) for s in sigma]
        head = self.model.rationale_head
        top = head(prior.mean[0].to(head.weight.dtype)).topk(5, dim=-1).indices.tolist()
        return [Slot(s, [self.tokenizer.decode([token]) for token in tokens]) for s, tokens in zip(sigma, top)]


def load(folder, device: str = "cpu", dtype: torch.dtype | None = None) -> AskableModel:
    """A model folder (written by `amvl convert`, or a Hugging Face one) ready for `.ask`."""
    return AskableModel(Path(folder), device, dtype)
