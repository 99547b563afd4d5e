"""A Qwen vision-language model (Qwen2.5-VL, Qwen2-VL or Qwen3-VL: amvl/model/families/) that thinks
in k continuous latent slots before it answers.

Training (posterior layout `suffix`, docs/METHOD.md section 2) lays a batch out as

    [pad .. x | P_1..P_k | y | Q_1..Q_k | .. pad]      prompts left-padded, so P starts at one column

and runs x once, keeping its key/value cache (`PassCache`), then two passes that continue from it:
- the variational pass over [P | y | Q]: the prior p(Z|x) is read at the P slots (causal: they
  see only x), the posterior q(Z|x,y) at the Q slots (they see x and y);
- the decode pass over [inj(Z) | y] scores y teacher-forced.
Layout `pooled` drops the Q slots; the posterior reads [h_P ; mean of h_y] instead.

Inference reads only the prior: prefill [x | P], draw Z = mean + tau * sigma * eps, crop the
cache back to x, recompute the slots as inj(Z), then score each option or generate greedily.
With sequential slots (`model.sequential_slots`) the prior of slot t is read instead from the
column before it, after x and inj(Z_<t): from the decode pass in training, one slot at a time
(`roll_out`, `think`) where Z comes from the prior.
Baselines use the same code: `pause` slots keep their learned embeddings, `none` has no slots.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from amvl.distributed import PRECISIONS
from amvl.errors import UserError
from amvl.model.backbone import IM_END, slot_tokens
from amvl.objectives import DiagGaussian, cat_gaussians

LATENT_WEIGHTS = "latent_modules.safetensors"
LATENT_CONFIG = "amvl_config.json"


SLOT_KINDS = ("latent", "pause", "none")
POSTERIOR_LAYOUTS = ("suffix", "pooled", "rollout")


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
    # "latent": the slots carry inj(Z); "pause": learned pause embeddings, no Z (ntp_pause);
    # "none": no slots at all (plain ntp). Set by the objective; inference needs to know it.
    slot_kind: str = "latent"
    # how q sees y: Q slots after y, [h_P ; mean-pooled h_y], or [the roll-out state ; y's embedding]
    posterior_layout: str = "suffix"
    posterior_input: str = "answer"  # what q reads as y: the answer, the rationale, or both
    eos_id: int | None = None  # where generation stops
    answer_format: str = "letter"  # how answers were written in training (amvl.data.collate.ANSWER_FORMATS)
    precision: str = "fp32"  # train.precision: the dtype evaluation loads the model in by default
    attn_implementation: str = "sdpa"  # model.attn_implementation, which evaluation uses too
    # model.sequential_slots: slot t's prior is read after inj(Z_<t), one pass a slot (depth), not
    # at k placeholder slots filled side by side in one pass (width)
    sequential: bool = False
    rationale_vocab: int = 0  # > 0: a per-slot rationale readout Z_t -> vocabulary (objective.rationale_weight)
    # model.injector: "linear", inj(Z) = a projection scaled to the embedding norm; "vocabulary", the
    # mixture of token embeddings the rationale readout names (the slots then read like text)
    injector: str = "linear"
    # model.rationale_slots: "first", slot t is tied to step t and later slots are free; "hold", the
    # slots after a row's last step hold it, so the last slot always holds the last step
    rationale_slots: str = "first"


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
        out = self.gaussian(hidden)
        out.head_only = self.gaussian(hidden.detach())  # objective.kl_to_backbone: false trains the head alone
        return out

    def gaussian(self, hidden: torch.Tensor) -> DiagGaussian:
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
        return F.normalize(self.proj(z.to(self.proj.weight.dtype)), dim=-1) * self.embed_norm


class PassLayer(DynamicLayer):
    """One decoder layer's keys and values for one training pass: a fixed prefix (x's, or none)
    followed by the pass's own columns, which are returned to attention but never stored. The
    first write is recorded (`written`: x's keys and values, for the passes after it). A layer
    rerun by gradient checkpointing in backward therefore sees what it saw the first time."""

    def __init__(self, keys=None, values=None):
        super().__init__()
        self.written = None
        if keys is not None:
            self.lazy_initialization(keys, values)
            self.keys, self.values = keys, values

    def update(self, keys, values, *args, **kwargs):
        if self.written is None:
            self.written = (keys, values)
        if not self.is_initialized:
            return keys, values
        return torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2)


class PassCache(Cache):
    """The cache of one training pass: empty for the x pass, then `after(x_cache)` for each pass
    that continues from x. Passes never see each other's columns, so nothing is cropped."""

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        if prefix:
            super().__init__(layers=[PassLayer(keys, values) for keys, values in prefix])
        else:
            super().__init__(layer_class_to_replicate=PassLayer)

    @classmethod
    def after(cls, x_cache: "PassCache") -> "PassCache":
        return cls([layer.written for layer in x_cache.layers])


@dataclass
class Layout:
    ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    prefix_len: int  # columns of x (left-padded): the slots start here in every row
    k: int  # slot columns after x (0 for plain ntp)
    answer_mask: torch.Tensor  # (B, T) True at answer tokens
    posterior_cols: torch.Tensor | None  # (B, k) columns of Q_1..Q_k

    @property
    def slots(self) -> slice:
        return slice(self.prefix_len, self.prefix_len + self.k)

    @property
    def answer_end(self) -> int:
        """First column after the longest answer (the Q slots of that row start there)."""
        return self.prefix_len + self.k + int(self.answer_mask.sum(1).max())


@dataclass
class Thought:
    """Inference state after [x | slots]: the cache, and what the next token continues from."""

    cache: DynamicCache
    attention_mask: torch.Tensor  # (B, columns in the cache)
    last_hidden: torch.Tensor  # (B, hidden) final hidden state of the last column
    next_position: torch.Tensor  # (B,) mRoPE position of the next text token
    prior: DiagGaussian | None

    def select(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.last_hidden.device)
        self.cache.batch_select_indices(index)
        self.attention_mask, self.last_hidden = self.attention_mask[index], self.last_hidden[index]
        self.next_position = self.next_position[index]


class LatentReasoner(nn.Module):
    def __init__(self, backbone, cfg: LatentConfig):
        super().__init__()
        self.backbone, self.cfg = backbone, cfg
        hidden_size = backbone.config.text_config.hidden_size
        self.prior_head = GaussianHead(hidden_size, cfg.d, tuple(cfg.prior_logvar_bounds))
        posterior_input = hidden_size * {"suffix": 1, "pooled": 2, "rollout": 3}[cfg.posterior_layout]
        self.posterior_head = GaussianHead(posterior_input, cfg.d, tuple(cfg.posterior_logvar_bounds))
        heads = [self.prior_head, self.posterior_head]
        if cfg.injector == "linear":
            self.injector = LatentInjector(cfg.d, hidden_size, cfg.embed_norm)
            heads.append(self.injector)
        for module in heads:
            module.proj.to(backbone.dtype)  # a bf16 backbone: weights in bf16, as DeepSpeed's bf16 casts them
        if cfg.rationale_vocab:  # Z_t -> the tokens of rationale step t; made only when used
            self.rationale_head = nn.Linear(cfg.d, cfg.rationale_vocab).to(backbone.dtype)
        # Encode x once and let both training passes continue from its key/value cache. Off only
        # to check that it changes nothing (tests) or to compare costs (benchmarks).
        self.reuse_prefix_cache = True
        if cfg.freeze_vision:
            backbone.model.visual.requires_grad_(False)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer in backward instead of keeping its activations. The layers
        keep reading and writing the training passes' PassCache: its writes are recorded once and
        its reads never change, so a recomputed layer sees what it saw (transformers drops the
        cache under checkpointing otherwise, and x would then run again in every pass)."""
        kwargs = {"use_reentrant": False}  # non-reentrant: gradients reach x through the cache, not layer outputs
        if hasattr(self.backbone, "activation_checkpointing_enable"):
            self.backbone.activation_checkpointing_enable(kwargs)
        else:  # transformers before the rename
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        for layer in self.backbone.model.language_model.layers:
            layer._can_checkpoint_with_cache = True

    # ---- token layout and the backbone calls -------------------------------------------------
    def layout(self, prompt_ids, answer_ids, slot_ids: list[int], posterior_ids: list[int] | None = None) -> Layout:
        """[pad .. x | slots | y | Q | .. pad]: prompts left-padded, answers and Q right-padded."""
        k, batch = len(slot_ids), len(prompt_ids)
        answer_ids = answer_ids or [[] for _ in prompt_ids]
        prompt_len = max(len(p) for p in prompt_ids)
        length = prompt_len + k + max(len(a) for a in answer_ids) + len(posterior_ids or [])
        ids = torch.full((batch, length), self.cfg.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        answer_mask = torch.zeros((batch, length), dtype=torch.bool)
        posterior_cols = torch.zeros((batch, len(posterior_ids)), dtype=torch.long) if posterior_ids else None
        for i, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids)):
            tail = list(slot_ids) + list(answer)
            if posterior_ids:
                end = prompt_len + k + len(answer)
                posterior_cols[i] = torch.arange(end, end + len(posterior_ids))
                tail += list(posterior_ids)
            row = torch.tensor(prompt + tail)
            start = prompt_len - len(prompt)
            ids[i, start : start + len(row)] = row
            attention[i, start : start + len(row)] = 1
            answer_mask[i, prompt_len + k : prompt_len + k + len(answer)] = True
        return Layout(ids, attention, prompt_len, k, answer_mask, posterior_cols)

    @property
    def reads_rationale(self) -> bool:
        """Whether the model reads a row's rationale or its steps (a privileged posterior, a rationale
        readout): only then are they tokenized (`encode(..., rationale=True)`)."""
        return self.cfg.slot_kind == "latent" and (self.cfg.posterior_input != "answer" or self.cfg.rationale_vocab > 0)

    def slot_ids(self) -> list[int]:
        return [] if self.cfg.slot_kind == "none" else list(self.cfg.prior_slot_ids)

    def inputs(self, layout: Layout, batch: dict, images=None):
        """Image features (computed once, shared by every pass: pass them in to reuse them), token
        embeddings, mRoPE positions."""
        device = self.backbone.device
        grids = batch["image_grid_thw"].to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_vision):
            pixels = batch["pixel_values"].to(device, self.backbone.model.visual.dtype)
            if images is None:
                images = self.backbone.model.get_image_features(pixels, grids, return_dict=True)
        embeds = self.backbone.get_input_embeddings()(layout.ids.to(device))
        # Qwen's 3-D positions, (3, B, T), from the whole layout and passed explicitly: with
        # inputs_embeds alone the model would silently fall back to 1-D positions.
        ids, attention = layout.ids.to(device), layout.attention_mask.to(device)
        image_token = (ids == self.backbone.config.image_token_id).int()
        positions, _ = self.backbone.model.get_rope_index(
            ids, image_token, image_grid_thw=grids, attention_mask=attention
        )
        return images, embeds, positions

    def run(self, layout, embeds, positions, images, stop: int, start: int = 0, cache=None) -> torch.Tensor:
        """Final hidden states of columns [start, stop); `cache` holds columns [0, start)."""
        device = embeds.device
        out = self.backbone.model(
            # Embeddings alone (every family finds its image tokens by their embedding; Qwen3-VL
            # refuses input_ids beside them), with positions and image features given.
            inputs_embeds=embeds[:, start:stop],
            attention_mask=layout.attention_mask[:, :stop].to(device),
            position_ids=positions[..., start:stop],
            mm_encoder_outputs={"image": images} if start == 0 else None,  # image tokens live in x
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def with_latents(self, layout: Layout, embeds: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The decode-pass input: the first z.shape[1] slot embeddings replaced by inj(Z)."""
        injected = embeds.clone()
        injected[:, layout.prefix_len : layout.prefix_len + z.shape[1]] = self.inject(z).to(embeds.dtype)
        return injected

    def inject(self, z: torch.Tensor) -> torch.Tensor:
        """inj(Z): slot input embeddings (B, k, hidden) from latents (B, k, d), as model.injector says."""
        if self.cfg.injector == "linear":
            return self.injector(z)
        # What the readout names, as the token embeddings a decoder already reads (a pretrained one
        # too: in distribution by construction); the table is read, not trained, through the slots.
        names = torch.softmax(self.rationale_head(z.to(self.rationale_head.weight.dtype)).float(), dim=-1)
        return names @ self.backbone.get_input_embeddings().weight.detach().float()

    def roll_out(self, state, k: int, column, draw, privileged=None, last_column: bool = False):
        """Sequential slots, in training and at inference: the prior of slot t is read from the
        state before it (x's last column for the first), Z_t = draw(t, prior_t, posterior_t), and
        `column(Z_<=t, t)` gives the state after slot t (the final hidden state of its column, the
        slots holding inj(Z_<=t)); one pass a slot, so slot t has the depth of t passes. The
        roll-out posterior (layout `rollout`) reads the same state and `privileged[:, t]`
        (`privileged_inputs`). `last_column`: also the state after the last slot (inference goes on
        from it). Returns Z (B, k, d), the priors, the posteriors (None without `privileged`) and the
        last state."""
        draws, priors, posteriors = [], [], []
        for t in range(k):
            priors.append(self.prior_head(state[:, None]))
            if privileged is not None:  # scaled to the state's norm, so neither half drowns the other
                seen = privileged[:, t] * state.detach().norm(dim=-1, keepdim=True)
                posteriors.append(self.posterior_head(torch.cat([state, seen.to(state.dtype)], -1)[:, None]))
            draws.append(draw(t, priors[-1], posteriors[-1] if posteriors else None))
            if t + 1 < k or last_column:
                state = column(torch.cat(draws, 1), t)
        posterior = cat_gaussians(posteriors, dim=1) if posteriors else None
        return torch.cat(draws, 1), cat_gaussians(priors, dim=1), posterior, state

    def privileged_inputs(self, batch: dict, k: int) -> torch.Tensor:
        """What the roll-out posterior sees besides the state, (B, k, 2 x hidden): for slot t, the
        mean input embedding of rationale step t's result (posterior_input rationale*), then of the
        answer (answer, rationale_and_answer), each scaled to unit norm; zeros where there is none
        (a row without step t). Token embeddings are inputs here, not trained through q."""
        table = self.backbone.get_input_embeddings().weight.detach().float()
        hidden, reads = table.shape[1], self.cfg.posterior_input
        seen = torch.zeros(len(batch["answer_ids"]), k, 2 * hidden, device=table.device)
        for i, (steps, answer) in enumerate(zip(batch["step_ids"], batch["answer_ids"])):
            if reads != "answer":
                for t, ids in enumerate(self.slot_steps(steps, k)):
                    seen[i, t, :hidden] = F.normalize(table[ids].mean(0), dim=-1)
            if reads != "rationale" and answer:
                seen[i, :, hidden:] = F.normalize(table[answer].mean(0), dim=-1)
        return seen

    def answer_log_probs(self, hidden: torch.Tensor, layout: Layout, start: int = 0) -> torch.Tensor:
        """Log-probability of each answer token (flattened over the batch) given what precedes it;
        `hidden` covers the columns from `start` on."""
        answer_mask = layout.answer_mask[:, start : start + hidden.shape[1]].to(hidden.device)
        predicting = torch.roll(answer_mask, shifts=-1, dims=1)  # position t predicts token t + 1
        logits = self.backbone.lm_head(hidden[predicting]).float()
        targets = layout.ids[:, start : start + hidden.shape[1]].to(hidden.device)[answer_mask]
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)

    def posterior(self, hidden: torch.Tensor, layout: Layout, start: int) -> DiagGaussian:  # suffix, pooled
        """q(Z | x, y) from the variational pass (`hidden` covers the columns from `start` on)."""
        if self.cfg.posterior_layout == "suffix":
            cols = (layout.posterior_cols.to(hidden.device) - start)[..., None].expand(-1, -1, hidden.shape[-1])
            return self.posterior_head(hidden.gather(1, cols))
        slots = slice(layout.prefix_len - start, layout.prefix_len - start + layout.k)
        answer = layout.answer_mask[:, start : start + hidden.shape[1]].to(hidden.device)[..., None]
        pooled = (hidden * answer).sum(1) / answer.sum(1).clamp(min=1)
        return self.posterior_head(torch.cat([hidden[:, slots], pooled[:, None].expand(-1, layout.k, -1)], -1))

    # ---- training ---------------------------------------------------------------------------
    def forward(self, batch: dict, latents: str = "posterior", decode: bool = True, decode_from: str = "posterior",
                z_probe: bool = False, prior_answer: bool = False) -> dict:  # fmt: skip
        """L_ntp(y | x, Z) with Z from `latents`: "posterior" (Z ~ q, the variational objectives),
        "prior_mean" (latent_det), "pause" or "none" (no Z). Returns the loss, prior and posterior
        (with `decode=False` only the latter two: the variational pass alone). `decode_from="prior"`
        decodes a variational objective's step from Z ~ p instead (train.prior_decode_fraction).
        With sequential slots the prior is read after the posterior's Z_<t in the decode pass (the
        prior given the prior's own Z_<t, its mean, with `decode=False` or from "prior_mean").
        `z_probe`: also the answer loss, without gradient, with other latents in place of Z
        (`z_probe` below), under "z_probe". `prior_answer` (variational objectives): also the answer
        loss with Z from the prior's own means (rolled out if sequential), as inference draws it,
        under "prior_answer_loss" (objective.prior_answer_weight: latent_det's loss beside q's)."""
        suffix = latents == "posterior" and self.cfg.posterior_layout == "suffix"
        # The roll-out posterior reads the decode roll-out's own states: no variational pass.
        rollout = latents == "posterior" and self.cfg.posterior_layout == "rollout"
        slot_ids = [] if latents == "none" else list(self.cfg.prior_slot_ids)
        # A privileged posterior reads the rationale before y in the variational pass (a row
        # without one: nothing but x); the decode pass then has a layout of its own, y alone after the slots.
        privileged = latents == "posterior" and self.cfg.posterior_input != "answer" and not rollout
        seen = batch["answer_ids"]
        if privileged:
            rationales = batch.get("rationale_ids") or [[]] * len(seen)
            with_answer = self.cfg.posterior_input == "rationale_and_answer"
            seen = [r + a if with_answer else r for r, a in zip(rationales, batch["answer_ids"])]
        layout = self.layout(batch["prompt_ids"], seen, slot_ids, self.cfg.posterior_slot_ids if suffix else None)
        images, embeds, positions = self.inputs(layout, batch)
        if latents in ("pause", "none"):  # one pass, nothing to infer
            hidden = self.run(layout, embeds, positions, images, stop=layout.answer_end)
            return {"ntp_loss": -self.answer_log_probs(hidden, layout).mean(), "prior": None, "posterior": None}

        # Variational pass over [x | P | y | Q]: P sees x only (prior), Q sees x and y (posterior).
        x_end, start, x_cache, cache, sequential = layout.prefix_len, 0, None, None, self.cfg.sequential
        if self.reuse_prefix_cache:
            x_cache, start = PassCache(), x_end
            x_last = self.run(layout, embeds, positions, images, stop=x_end, cache=x_cache)[:, -1]
            cache = PassCache.after(x_cache)
        elif sequential:
            x_last = self.run(layout, embeds, positions, images, stop=x_end)[:, -1]
        prior = posterior = None
        if (latents == "posterior" and not rollout) or not sequential:
            stop = layout.slots.stop if latents == "prior_mean" else layout.ids.shape[1]
            hidden = self.run(layout, embeds, positions, images, stop=stop, start=start, cache=cache)
            if not sequential:
                prior = self.prior_head(hidden[:, x_end - start : x_end - start + layout.k])
            if latents == "posterior":
                posterior = self.posterior(hidden, layout, start)
        # What Z_t is drawn from in a roll-out, given (t, prior_t, posterior_t)
        pick = {"prior_mean": lambda t, p, q: p.mean, "prior": lambda t, p, q: p.sample(),
                "posterior": lambda t, p, q: q.sample()}  # fmt: skip
        source = "prior_mean" if latents == "prior_mean" or (sequential and not decode) else decode_from

        def column(z, t):  # training: slots 1..t+1 run again after x's cache (which never grows: see PassCache)
            cache = PassCache.after(x_cache) if x_cache is not None else None
            slot_embeds = self.with_latents(layout, embeds, z)
            return self.run(layout, slot_embeds, positions, images, layout.prefix_len + t + 1, start, cache)[:, -1]

        def roll(draw, seen_by_q=None):  # a roll-out over the current layout: Z, priors, posteriors
            return self.roll_out(x_last, layout.k, column, draw, seen_by_q)[:3]

        if rollout and decode:  # prior_t and q_t from the state after Z_<t drawn from `decode_from`
            z, prior, posterior = roll(pick[decode_from], self.privileged_inputs(batch, layout.k))
        elif rollout:  # q's own roll-out (its means) given what it sees; the prior's given x alone
            posterior = roll(lambda t, p, q: q.mean, self.privileged_inputs(batch, layout.k))[2]
            prior = roll(pick["prior_mean"])[1]
        elif sequential and source in ("prior_mean", "prior"):
            z, prior, _ = roll(pick[source])
        if not decode:
            return {"prior": prior, "posterior": posterior}

        # Decode pass over [x | inj(Z) | y], continuing from x's cache (same position ids).
        if not rollout and (not sequential or source == "posterior"):
            z = prior.mean if posterior is None else prior.sample() if source == "prior" else posterior.sample()
        if privileged:
            layout = self.layout(batch["prompt_ids"], batch["answer_ids"], slot_ids)
            _, embeds, positions = self.inputs(layout, batch, images)

        def answer_loss(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """The decode pass over [x | inj(z) | y], continuing from x's cache: hidden states, L_ntp."""
            cache = PassCache.after(x_cache) if x_cache is not None else None
            hidden = self.run(layout, self.with_latents(layout, embeds, z), positions, images, layout.answer_end, start, cache)
            return hidden, -self.answer_log_probs(hidden, layout, start).mean()

        decoded, ntp_loss = answer_loss(z)
        if prior is None:  # sequential, Z from q: prior_t from the column before slot t, after x and Z_<t
            before = decoded[:, x_end - start : x_end - start + layout.k - 1]
            prior = self.prior_head(torch.cat([x_last[:, None], before], 1))
        out = {"ntp_loss": ntp_loss, "prior": prior, "posterior": posterior}
        prior_z = None
        if posterior is not None and (prior_answer or z_probe):  # the prior's Z as inference draws it
            with torch.set_grad_enabled(prior_answer and torch.is_grad_enabled()):
                prior_z = roll(pick["prior_mean"])[0] if sequential else prior.mean
            if prior_answer:
                out["prior_answer_loss"] = answer_loss(prior_z)[1]
        if z_probe:
            with torch.no_grad():
                out["z_probe"] = self.z_probe(lambda z: answer_loss(z)[1], z, prior_z)
        if self.cfg.rationale_vocab:  # the latents the decoder read (samples: a wide q cannot hide behind its mean)
            out["rationale_loss"] = self.rationale_loss(z, batch)
            if posterior is not None:  # the prior's own means, read out too (objective.rationale_prior_weight)
                out["rationale_prior_loss"] = self.rationale_loss(prior.mean, batch)
        return out

    @staticmethod
    def z_probe(answer_loss, z: torch.Tensor, prior_z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Is Z used? The answer loss with Z zeroed and with Z shuffled across the batch (each row gets
        its neighbour's), and with `prior_z` (a variational objective's prior, which the decoder
        meets at test time) where given. A decoder that ignores Z scores them all like the Z it
        trained on; with a batch of one, shuffling changes nothing."""
        probe = {"ntp_zero_z": answer_loss(torch.zeros_like(z)), "ntp_shuffled_z": answer_loss(z.roll(1, dims=0))}
        if prior_z is not None:
            probe["ntp_prior_z"] = answer_loss(prior_z)
        return {name: loss.detach() for name, loss in probe.items()}

    def slot_steps(self, steps: list[list[int]], k: int) -> list[list[int]]:
        """The rationale step each slot is tied to (model.rationale_slots): step t for slot t, and with
        "hold" the last step again for every slot after it; a row without steps ties none."""
        tied = steps[:k]
        if self.cfg.rationale_slots == "hold" and tied:
            tied = tied + [tied[-1]] * (k - len(tied))
        return tied

    def rationale_loss(self, z: torch.Tensor, batch: dict) -> torch.Tensor:
        """Cross-entropy from each slot's latent to the tokens of the rationale step it is tied to
        (`slot_steps` of `Example.step_ids`); slots tied to none are not scored."""
        log_probs = torch.log_softmax(self.rationale_head(z.to(self.rationale_head.weight.dtype)).float(), -1)
        k = z.shape[1]
        steps = [(i, t, ids) for i, row in enumerate(batch["step_ids"]) for t, ids in enumerate(self.slot_steps(row, k))]
        scores = [log_probs[i, t, ids].mean() for i, t, ids in steps]
        return -torch.stack(scores).mean() if scores else log_probs.sum() * 0

    # ---- inference: the prior only ------------------------------------------------------------
    @torch.no_grad()
    def think(self, batch: dict, tau: float = 0.0, z: torch.Tensor | None = None) -> Thought:
        """Prefill [x | P], read the prior, draw Z (or take `z`), recompute the slots as inj(Z)."""
        layout = self.layout(batch["prompt_ids"], None, self.slot_ids())
        images, embeds, positions = self.inputs(layout, batch)
        cache, x_end, prior = DynamicCache(), layout.prefix_len, None
        if self.cfg.slot_kind == "latent" and self.cfg.sequential:  # slot by slot, each read after Z_<t

            def column(drawn, t):  # inference: the cache grows by slot t's column
                return self.run(layout, self.with_latents(layout, embeds, drawn), positions, images, x_end + t + 1,
                                x_end + t, cache)[:, -1]  # fmt: skip

            draw = lambda t, p, q: p.sample(tau) if z is None else z[:, t : t + 1]  # noqa: E731
            x_last = self.run(layout, embeds, positions, images, stop=x_end, cache=cache)[:, -1]
            _, prior, _, last = self.roll_out(x_last, layout.k, column, draw, last_column=True)
            hidden = last[:, None]
        elif self.cfg.slot_kind == "latent":
            self.run(layout, embeds, positions, images, stop=x_end, cache=cache)
            prior = self.prior_head(self.run(layout, embeds, positions, images, layout.slots.stop, x_end, cache))
            cache.crop(-layout.k)
            embeds = self.with_latents(layout, embeds, prior.sample(tau) if z is None else z)
            hidden = self.run(layout, embeds, positions, images, layout.slots.stop, x_end, cache)
        else:
            hidden = self.run(layout, embeds, positions, images, layout.slots.stop, cache=cache)
        next_position = positions.amax(dim=(0, 2)) + 1  # text after x continues from its largest position
        return Thought(cache, layout.attention_mask.to(hidden.device), hidden[:, -1], next_position, prior)

    def extend(self, thought: Thought, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states of text `tokens` (B, T) appended after the thought; advances it."""
        device = thought.last_hidden.device
        tokens, mask = tokens.to(device), mask.to(device)
        thought.attention_mask = torch.cat([thought.attention_mask, mask.long()], 1)
        positions = thought.next_position[:, None] + torch.arange(tokens.shape[1], device=device)
        out = self.backbone.model(
            input_ids=tokens,
            attention_mask=thought.attention_mask,
            position_ids=positions[None].expand(3, -1, -1),
            cache=thought.cache,
            use_cache=True,
        )
        thought.next_position = thought.next_position + tokens.shape[1]
        return out.last_hidden_state

    @torch.no_grad()
    def score_choices(self, batch: dict, choice_ids: list[list[list[int]]], tau: float = 0.0, z=None) -> torch.Tensor:
        """Log-likelihood of every option's answer given Z from the prior (or `z`): (B, max options), -inf pads."""
        thought = self.think(batch, tau, z)
        owner = [i for i, options in enumerate(choice_ids) for _ in options]  # one row per option
        thought.select(owner)
        options = [c for cs in choice_ids for c in cs]
        tokens = torch.full((len(options), max(map(len, options))), self.cfg.pad_id)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        for row, option in enumerate(options):
            tokens[row, : len(option)], mask[row, : len(option)] = torch.tensor(option), True
        hidden = self.extend(thought, tokens, mask)
        # token t is predicted by the state before it: the thought's last column, then token t - 1
        states = torch.cat([thought.last_hidden[:, None], hidden[:, :-1]], 1)
        mask = mask.to(states.device)
        log_probs = torch.log_softmax(self.backbone.lm_head(states[mask]).float(), -1)
        token_scores = log_probs.gather(-1, tokens.to(states.device)[mask][:, None]).squeeze(-1)
        row_scores = torch.zeros(len(options), device=states.device).index_add_(0, mask.nonzero()[:, 0], token_scores)

        scores = torch.full((len(choice_ids), max(len(c) for c in choice_ids)), float("-inf"), device=states.device)
        scores[owner, [j for options in choice_ids for j in range(len(options))]] = row_scores
        return scores

    def end_ids(self) -> list[int]:
        """Every token that ends an answer: <|im_end|> and the generation config's end tokens
        (the released Qwen2.5-VL's: <|im_end|> and <|endoftext|>)."""
        ends = self.backbone.generation_config.eos_token_id
        ends = [] if ends is None else [ends] if isinstance(ends, int) else list(ends)
        return sorted({self.cfg.eos_id, *ends} - {None})

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int = 16, tau: float = 0.0, z=None) -> list[list[int]]:
        """Greedy answers after thinking with Z from the prior (or `z`); each stops at an end token
        (not returned) or after `max_new_tokens`; the batch stops when every answer has."""
        thought = self.think(batch, tau, z)
        logits = self.backbone.lm_head(thought.last_hidden)
        answers = [[] for _ in batch["prompt_ids"]]
        running = torch.ones(len(answers), dtype=torch.bool, device=logits.device)
        ends = torch.tensor(self.end_ids(), device=logits.device)
        for _ in range(max_new_tokens):
            token = logits.argmax(-1)
            running &= ~torch.isin(token, ends)
            if not running.any():
                break
            for i in running.nonzero()[:, 0].tolist():
                answers[i].append(int(token[i]))
            logits = self.backbone.lm_head(self.extend(thought, token[:, None], running[:, None])[:, -1])
        return answers

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
    def load(cls, folder: Path, device="cpu", dtype: torch.dtype | None = None) -> "LatentReasoner":
        """A model folder written by `amvl convert`, on `device`, in `dtype` (default: the
        precision it was trained in), with the attention implementation it was trained with."""
        folder = Path(folder)
        if not (folder / LATENT_CONFIG).exists() and (folder / "config.json").exists():
            return cls.load_plain(folder, device, dtype)
        for name in ("config.json", LATENT_CONFIG, LATENT_WEIGHTS):
            if not (folder / name).exists():
                raise UserError(
                    f"{folder}: missing {name}; give a model folder written by `amvl convert`, "
                    "or a Hugging Face Qwen2.5-VL / Qwen2-VL / Qwen3-VL folder"
                )
        cfg = LatentConfig(**json.loads((folder / LATENT_CONFIG).read_text()))
        dtype = dtype or PRECISIONS[cfg.precision]
        backbone = AutoModelForImageTextToText.from_pretrained(
            folder, dtype=dtype, attn_implementation=cfg.attn_implementation
        )
        model = cls(backbone, cfg)
        missing, unexpected = model.load_state_dict(load_file(folder / LATENT_WEIGHTS), strict=False)
        missing = [key for key in missing if not key.startswith("backbone.")]
        if missing or unexpected:
            raise UserError(f"{folder / LATENT_WEIGHTS}: missing {missing}, unexpected {unexpected}")
        return model.to(device)

    @classmethod
    def load_plain(cls, folder: Path, device="cpu", dtype: torch.dtype | None = None) -> "LatentReasoner":
        """A Hugging Face Qwen2.5-VL / Qwen2-VL / Qwen3-VL folder as released (a base model evaluated zero-shot,
        or anyone's fine-tune): no slots, answers as BLINK writes them, in the folder's own dtype."""
        from amvl.model.backbone import load_processors, pretrained_config

        config = pretrained_config(folder, key="--model (no amvl_config.json: not written by `amvl convert`)")
        stored = config.get("torch_dtype") or config.get("dtype") or config.get("text_config", {}).get("dtype")
        precision = "bf16" if stored == "bfloat16" else "fp32"
        backbone = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype or PRECISIONS[precision])
        tokenizer = load_processors(folder)[0]
        cfg = LatentConfig(
            k=0, d=1, prior_slot_ids=[], posterior_slot_ids=[], pad_id=tokenizer.pad_token_id,
            prior_logvar_bounds=(-8.0, 8.0), posterior_logvar_bounds=(-8.0, 8.0),
            embed_norm=1.0, freeze_vision=True, slot_kind="none",
            eos_id=tokenizer.convert_tokens_to_ids(IM_END), answer_format="letter", precision=precision,
        )  # fmt: skip
        return cls(backbone, cfg).to(device)


def wrap_backbone(backbone, tokenizer, model_cfg, slot_kind: str = "latent", precision: str = "fp32",
                  rationale_vocab: int = 0) -> LatentReasoner:  # fmt: skip
    """Add the latent slots, heads and injector of the `model` config section to a backbone;
    `slot_kind` comes from the objective, `precision` from training and `rationale_vocab` (a
    rationale readout's vocabulary, 0 for none) from objective.rationale_weight (see LatentConfig)."""
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
        slot_kind=slot_kind,
        posterior_layout=model_cfg.posterior_layout,
        posterior_input=model_cfg.posterior_input,
        eos_id=tokenizer.convert_tokens_to_ids(IM_END),
        answer_format=model_cfg.answer_format,
        precision=precision,
        attn_implementation=model_cfg.attn_implementation,
        sequential=model_cfg.sequential_slots,
        rationale_vocab=rationale_vocab,
        injector=model_cfg.injector,
        rationale_slots=model_cfg.rationale_slots,
    )
    return LatentReasoner(backbone, cfg)


def save_skeleton(model: LatentReasoner, folder: Path) -> None:
    """Everything but the weights: enough for `load_skeleton` to rebuild the module for conversion."""
    folder = Path(folder)
    model.backbone.config.save_pretrained(folder)
    (folder / LATENT_CONFIG).write_text(json.dumps(asdict(model.cfg), indent=2))


def load_skeleton(folder: Path) -> LatentReasoner:
    """In float32 whatever the training precision: conversion writes the fp32 master weights."""
    cfg = LatentConfig(**json.loads((Path(folder) / LATENT_CONFIG).read_text()))
    config = AutoConfig.from_pretrained(folder)
    return LatentReasoner(AutoModelForImageTextToText.from_config(config, dtype=torch.float32), cfg)
