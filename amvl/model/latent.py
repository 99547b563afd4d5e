"""A Qwen2.5-VL that thinks in k continuous latent slots before it answers.

Training (posterior layout `suffix`, AMVL.md section 2) runs two passes over one token layout,

    [pad .. x | P_1..P_k | y | Q_1..Q_k | .. pad]      prompts left-padded, so P starts at one column

- the variational pass reads the prior p(Z|x) at the P slots (causal: they see only x) and the
  posterior q(Z|x,y) at the Q slots (they see x and y);
- the decode pass replaces the P embeddings by inj(Z) and scores y teacher-forced. Causality
  keeps the Q positions, still in the layout, out of every answer logit.

Inference reads only the prior: [x | P] gives p, Z = mean + tau * sigma * eps, then
[x | inj(Z) | y] scores each option.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from amvl.errors import UserError
from amvl.objectives import DiagGaussian

LATENT_WEIGHTS = "latent_modules.safetensors"
LATENT_CONFIG = "amvl_config.json"


@dataclass
class LatentConfig:
    """What the wrapper adds to a backbone; saved as amvl_config.json beside the weights."""

    k: int
    d: int
    prior_slot_ids: list[int]
    posterior_slot_ids: list[int]
    pad_id: int
    prior_logvar_bounds: tuple[float, float]
    posterior_logvar_bounds: tuple[float, float]
    embed_norm: float  # mean norm of the input embeddings: the norm inj(Z) is scaled to
    freeze_vision: bool = True


class GaussianHead(nn.Module):
    """Final hidden state of a slot -> diagonal Gaussian over R^d.

    The log-variance is squashed softly into [low, high] (a sigmoid, not a hard clamp) so the
    loss stays finite and the bound still passes gradient.
    """

    def __init__(self, hidden_size: int, d: int, logvar_bounds: tuple[float, float]):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 2 * d)
        self.low, self.high = logvar_bounds
        # Start every log-variance at the middle of its bounds: random ones make the first KLs huge.
        nn.init.zeros_(self.proj.weight[d:])
        nn.init.zeros_(self.proj.bias[d:])

    def forward(self, hidden: torch.Tensor) -> DiagGaussian:
        mean, raw_logvar = self.proj(hidden).float().chunk(2, dim=-1)
        return DiagGaussian(mean, self.low + (self.high - self.low) * torch.sigmoid(raw_logvar))


class LatentInjector(nn.Module):
    """Z -> slot input embeddings, rescaled to the norm of real token embeddings.

    Final hidden states are far larger than input embeddings (about 50x in a fresh small model);
    an unscaled projection would feed the decoder inputs it has never seen.
    """

    def __init__(self, d: int, hidden_size: int, embed_norm: float):
        super().__init__()
        self.proj = nn.Linear(d, hidden_size)
        self.register_buffer("embed_norm", torch.tensor(float(embed_norm)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(z), dim=-1) * self.embed_norm


@dataclass
class Layout:
    ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    slot_start: int  # column of P_1 in every row
    answer_mask: torch.Tensor  # (B, T) True at answer tokens
    posterior_cols: torch.Tensor | None  # (B, k) columns of Q_1..Q_k


class LatentReasoner(nn.Module):
    def __init__(self, backbone: Qwen2_5_VLForConditionalGeneration, cfg: LatentConfig):
        super().__init__()
        self.backbone, self.cfg = backbone, cfg
        hidden_size = backbone.config.text_config.hidden_size
        self.prior_head = GaussianHead(hidden_size, cfg.d, tuple(cfg.prior_logvar_bounds))
        self.posterior_head = GaussianHead(hidden_size, cfg.d, tuple(cfg.posterior_logvar_bounds))
        self.injector = LatentInjector(cfg.d, hidden_size, cfg.embed_norm)
        if cfg.freeze_vision:
            backbone.model.visual.requires_grad_(False)

    # ---- token layout and the backbone calls -------------------------------------------------
    def layout(self, prompt_ids: list[list[int]], answer_ids: list[list[int]] | None, posterior: bool) -> Layout:
        k, batch = self.cfg.k, len(prompt_ids)
        answer_ids = answer_ids or [[] for _ in prompt_ids]
        prompt_len = max(len(p) for p in prompt_ids)
        length = prompt_len + k + max(len(a) for a in answer_ids) + (k if posterior else 0)
        ids = torch.full((batch, length), self.cfg.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        answer_mask = torch.zeros((batch, length), dtype=torch.bool)
        posterior_cols = torch.zeros((batch, k), dtype=torch.long) if posterior else None
        for i, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids)):
            tail = list(self.cfg.prior_slot_ids) + list(answer)
            if posterior:
                tail += list(self.cfg.posterior_slot_ids)
                end = prompt_len + k + len(answer)
                posterior_cols[i] = torch.arange(end, end + k)
            row = torch.tensor(prompt + tail)
            start = prompt_len - len(prompt)
            ids[i, start : start + len(row)] = row
            attention[i, start : start + len(row)] = 1
            answer_mask[i, prompt_len + k : prompt_len + k + len(answer)] = True
        return Layout(ids, attention, prompt_len, answer_mask, posterior_cols)

    def encode_images(self, pixel_values: torch.Tensor, grids: torch.Tensor) -> BaseModelOutputWithPooling:
        """Vision features, computed once per step and shared by both passes."""
        visual_dtype = self.backbone.model.visual.dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_vision):
            return self.backbone.model.get_image_features(pixel_values.to(visual_dtype), grids, return_dict=True)

    def positions(self, layout: Layout, grids: torch.Tensor) -> torch.Tensor:
        """Qwen's 3-D mRoPE positions, (3, B, T). Computed from the ids here and passed explicitly:
        with inputs_embeds alone the model would silently fall back to 1-D positions."""
        ids, attention = layout.ids.to(grids.device), layout.attention_mask.to(grids.device)
        image_token = (ids == self.backbone.config.image_token_id).int()
        positions, _ = self.backbone.model.get_rope_index(
            ids, image_token, image_grid_thw=grids, attention_mask=attention
        )
        return positions

    def hidden_states(self, layout: Layout, embeds: torch.Tensor, positions: torch.Tensor, images) -> torch.Tensor:
        out = self.backbone.model(
            input_ids=layout.ids.to(embeds.device),
            inputs_embeds=embeds,
            attention_mask=layout.attention_mask.to(embeds.device),
            position_ids=positions,
            mm_encoder_outputs={"image": images},
        )
        return out.last_hidden_state

    def slots(self, layout: Layout) -> slice:
        return slice(layout.slot_start, layout.slot_start + self.cfg.k)

    def with_latents(self, layout: Layout, embeds: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The decode-pass input: the P slot embeddings replaced by inj(Z)."""
        injected = embeds.clone()
        injected[:, self.slots(layout)] = self.injector(z).to(embeds.dtype)
        return injected

    def answer_log_probs(self, hidden: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Log-probability of each answer token (flattened over the batch) given what precedes it."""
        answer_mask = layout.answer_mask.to(hidden.device)
        predicting = torch.roll(answer_mask, shifts=-1, dims=1)  # position t predicts token t + 1
        logits = self.backbone.lm_head(hidden[predicting]).float()
        targets = layout.ids.to(hidden.device)[answer_mask]
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)

    # ---- training ---------------------------------------------------------------------------
    def forward(self, batch: dict, latent_source: str = "posterior") -> dict:
        """Both passes: the prior, the posterior and L_ntp(y | x, Z) with Z from `latent_source`."""
        layout = self.layout(batch["prompt_ids"], batch["answer_ids"], posterior=True)
        device = self.backbone.device
        grids = batch["image_grid_thw"].to(device)
        images = self.encode_images(batch["pixel_values"].to(device), grids)
        embeds = self.backbone.get_input_embeddings()(layout.ids.to(device))
        positions = self.positions(layout, grids)  # shared: both passes use the same layout

        hidden = self.hidden_states(layout, embeds, positions, images)
        prior = self.prior_head(hidden[:, self.slots(layout)])
        cols = layout.posterior_cols.to(device)[..., None].expand(-1, -1, hidden.shape[-1])
        posterior = self.posterior_head(hidden.gather(1, cols))

        z = posterior.sample() if latent_source == "posterior" else prior.mean
        decoded = self.hidden_states(layout, self.with_latents(layout, embeds, z), positions, images)
        ntp_loss = -self.answer_log_probs(decoded, layout).mean()
        return {"ntp_loss": ntp_loss, "prior": prior, "posterior": posterior}

    # ---- inference: the prior only ------------------------------------------------------------
    @torch.no_grad()
    def score_choices(self, batch: dict, choice_ids: list[list[list[int]]], tau: float = 0.0) -> torch.Tensor:
        """Log-likelihood of every option's answer given Z from the prior: (B, max options), -inf pads."""
        device = self.backbone.device
        grids = batch["image_grid_thw"].to(device)
        images = self.encode_images(batch["pixel_values"].to(device), grids)
        prefix = self.layout(batch["prompt_ids"], None, posterior=False)
        prefix_embeds = self.backbone.get_input_embeddings()(prefix.ids.to(device))
        prefix_hidden = self.hidden_states(prefix, prefix_embeds, self.positions(prefix, grids), images)
        prior = self.prior_head(prefix_hidden[:, self.slots(prefix)])
        z = prior.sample(tau)

        # One decode row per (question, option); each row repeats its question's images and Z.
        owner = [i for i, options in enumerate(choice_ids) for _ in options]
        first_image = torch.tensor([0] + batch["images_per_example"]).cumsum(0).tolist()
        image_rows = [j for i in owner for j in range(first_image[i], first_image[i + 1])]
        features = [images.pooler_output[j] for j in image_rows]
        layout = self.layout(
            [batch["prompt_ids"][i] for i in owner], [c for cs in choice_ids for c in cs], posterior=False
        )
        embeds = self.with_latents(layout, self.backbone.get_input_embeddings()(layout.ids.to(device)), z[owner])
        hidden = self.hidden_states(
            layout,
            embeds,
            self.positions(layout, grids[image_rows]),
            BaseModelOutputWithPooling(pooler_output=features),
        )
        token_log_probs = self.answer_log_probs(hidden, layout)
        row_of_token = layout.answer_mask.nonzero()[:, 0].to(device)
        row_scores = torch.zeros(len(owner), device=device).index_add_(0, row_of_token, token_log_probs)

        scores = torch.full((len(choice_ids), max(len(c) for c in choice_ids)), float("-inf"), device=device)
        option = [j for options in choice_ids for j in range(len(options))]
        scores[owner, option] = row_scores
        return scores

    # ---- save and load ------------------------------------------------------------------------
    def latent_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save(self, folder: Path) -> None:
        """Backbone in Hugging Face layout (model.safetensors), heads and injector beside it."""
        folder = Path(folder)
        self.backbone.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in self.latent_state_dict().items()}, folder / LATENT_WEIGHTS)
        (folder / LATENT_CONFIG).write_text(json.dumps(asdict(self.cfg), indent=2))

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype = torch.float32) -> "LatentReasoner":
        folder = Path(folder)
        for name in ("config.json", LATENT_CONFIG, LATENT_WEIGHTS):
            if not (folder / name).exists():
                raise UserError(f"{folder}: missing {name}; is this a model folder written by `amvl convert`?")
        cfg = LatentConfig(**json.loads((folder / LATENT_CONFIG).read_text()))
        backbone = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        model = cls(backbone, cfg)
        missing, unexpected = model.load_state_dict(load_file(folder / LATENT_WEIGHTS), strict=False)
        missing = [key for key in missing if not key.startswith("backbone.")]
        if missing or unexpected:
            raise UserError(f"{folder / LATENT_WEIGHTS}: missing {missing}, unexpected {unexpected}")
        return model


def wrap_backbone(backbone, tokenizer, model_cfg) -> LatentReasoner:
    """Add the latent slots, heads and injector of the `model` config section to a backbone."""
    from amvl.model.backbone import slot_tokens

    prior_tokens, posterior_tokens = slot_tokens(model_cfg.latent_slots)
    ids = tokenizer.convert_tokens_to_ids(prior_tokens + posterior_tokens)
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise UserError(f"tokenizer has no latent slot tokens {prior_tokens[0]}..; build it with slot_tokens()")
    embeddings = backbone.get_input_embeddings().weight
    cfg = LatentConfig(
        k=model_cfg.latent_slots,
        d=model_cfg.latent_dim,
        prior_slot_ids=ids[: model_cfg.latent_slots],
        posterior_slot_ids=ids[model_cfg.latent_slots :],
        pad_id=tokenizer.pad_token_id,
        prior_logvar_bounds=tuple(model_cfg.prior_logvar_bounds),
        posterior_logvar_bounds=tuple(model_cfg.posterior_logvar_bounds),
        embed_norm=float(embeddings.detach().float().norm(dim=-1).mean()),
        freeze_vision=model_cfg.freeze_vision,
    )
    return LatentReasoner(backbone, cfg)


def save_skeleton(model: LatentReasoner, folder: Path) -> None:
    """Everything but the weights: enough for `load_skeleton` to rebuild the module for conversion."""
    folder = Path(folder)
    model.backbone.config.save_pretrained(folder)
    (folder / LATENT_CONFIG).write_text(json.dumps(asdict(model.cfg), indent=2))


def load_skeleton(folder: Path) -> LatentReasoner:
    from transformers import AutoConfig

    cfg = LatentConfig(**json.loads((Path(folder) / LATENT_CONFIG).read_text()))
    return LatentReasoner(Qwen2_5_VLForConditionalGeneration(AutoConfig.from_pretrained(folder)), cfg)
