"""Diagonal Gaussians, their KL, KL-weight schedules and the objective registry.

Needs only torch, so the AMVL loss can be lifted into any trainer:

    prior = DiagGaussian(mean_p, logvar_p)          # batch x k x d, never sees the answer
    posterior = DiagGaussian(mean_q, logvar_q)      # sees the answer; training only
    objective = build_objective("amvl", beta={"max": 0.05}, gamma={"start": 50, "max": 0.05})
    terms = objective(ntp_loss, prior, posterior, step)
    terms["loss"].backward()

AMVL (docs/METHOD.md section 1):  L = L_ntp + beta(t) KL(sg[q] || p) + gamma(t) KL(sg[p] || q).
The forward term trains only the prior; the reverse term trains only the posterior.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DiagGaussian:
    """A diagonal Gaussian over k latent slots: mean and log-variance, each batch x k x d."""

    mean: torch.Tensor
    logvar: torch.Tensor
    # The same distribution with the gradient stopped at the input of the head that made it (the
    # model's heads set it): a KL on it trains that head alone, not the network under it.
    head_only: DiagGaussian | None = None

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, tau: float = 1.0) -> torch.Tensor:
        """Reparameterised draw mean + tau * sigma * eps (tau = 0 returns the mean)."""
        if tau == 0:
            return self.mean
        return self.mean + tau * self.std * torch.randn_like(self.mean)

    def detach(self) -> "DiagGaussian":
        """The stop-gradient sg[.] of the method: same values, no gradient to the head."""
        return DiagGaussian(self.mean.detach(), self.logvar.detach())


def cat_gaussians(gaussians: list[DiagGaussian], dim: int) -> DiagGaussian:
    """One Gaussian from several, concatenated along `dim` (0: examples, 1: slots)."""
    mean, logvar = torch.cat([g.mean for g in gaussians], dim), torch.cat([g.logvar for g in gaussians], dim)
    heads_only = [g.head_only for g in gaussians]
    return DiagGaussian(mean, logvar, None if None in heads_only else cat_gaussians(heads_only, dim))


def slot_kl(a: DiagGaussian, b: DiagGaussian) -> torch.Tensor:
    """KL(a || b) per example and slot, shape (batch, k), summed over d; in float32 even when the
    heads run in bf16, so small KLs do not round to zero."""
    mean_a, logvar_a = a.mean.float(), a.logvar.float()
    mean_b, logvar_b = b.mean.float(), b.logvar.float()
    per_dim = 0.5 * (logvar_b - logvar_a + (logvar_a.exp() + (mean_a - mean_b) ** 2) / logvar_b.exp() - 1.0)
    return per_dim.sum(-1)


def gaussian_kl(a: DiagGaussian, b: DiagGaussian, slot_reduction: str = "mean") -> torch.Tensor:
    """KL(a || b) per example, shape (batch,): summed over d, then mean (or sum) over slots."""
    per_slot = slot_kl(a, b)
    return per_slot.mean(-1) if slot_reduction == "mean" else per_slot.sum(-1)


@dataclass
class Schedule:
    """A weight that is 0 before `start`, rises linearly over `ramp` steps, then stays at `max`."""

    start: int = 0
    ramp: int = 0
    max: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if self.ramp == 0:
            return self.max
        return self.max * min(1.0, (step - self.start + 1) / self.ramp)


class KLObjective:
    """L_ntp plus weighted KL terms; `terms` says which are on.

    forward_kl: KL(sg[q] || p), weight beta, gradient to the prior only.
    reverse_kl: KL(sg[p] || q), weight gamma, gradient to the posterior only.
    joint_kl:   KL(q || p),     weight beta, gradient to both (plain ELBO).
    No terms: the loss is L_ntp alone (the baselines); prior and posterior may then be None.

    `latents` tells the model what fills the slots while training: "posterior" (Z ~ q),
    "prior_mean" (latent_det), "pause" (learned pause embeddings) or "none" (no slots).
    `free_bits` floors each slot's batch-mean KL in the loss (the logged KLs are the real ones):
    below the floor a term has no gradient. `rationale_weight` weighs the model's per-slot
    rationale loss (each slot's latent made to name its step of the rationale), when it gives one,
    and `rationale_prior_weight` the same loss read from the prior's means. `prior_answer_weight`
    weighs the answer loss decoded from the prior's own Z (its means, as at inference; variational
    objectives), so the decoder is trained on the prior's latents as latent_det's is, beside q's.
    `kl_to_backbone=False`
    takes every KL on the Gaussians' `head_only`: the KL terms then train the prior and posterior
    heads alone, and never the shared network whose hidden states the heads read.
    """

    def __init__(self, terms: set[str], beta: Schedule, gamma: Schedule, slot_reduction="mean", latents="posterior",
                 free_bits: float = 0.0, rationale_weight: float = 0.0,
                 rationale_prior_weight: float = 0.0, kl_to_backbone: bool = True,
                 prior_answer_weight: float = 0.0):  # fmt: skip
        self.terms, self.beta, self.gamma, self.slot_reduction = terms, beta, gamma, slot_reduction
        self.latents, self.free_bits, self.kl_to_backbone = latents, free_bits, kl_to_backbone
        # the model's auxiliary losses (model_out["<name>_loss"]) -> their weights
        self.aux_weights = {"rationale": rationale_weight, "rationale_prior": rationale_prior_weight,
                            "prior_answer": prior_answer_weight if terms else 0.0}  # fmt: skip

    def kl(self, a: DiagGaussian, b: DiagGaussian) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL(a || b) as logged, the same as the loss counts it: each slot floored at free_bits)."""
        logged = gaussian_kl(a, b, self.slot_reduction).mean()
        if not self.free_bits:
            return logged, logged
        per_slot = slot_kl(a, b).mean(0).clamp(min=self.free_bits)  # (k,): a slot's KL over the batch
        return logged, per_slot.mean() if self.slot_reduction == "mean" else per_slot.sum()

    @staticmethod
    def head_only(gaussian: DiagGaussian) -> DiagGaussian:
        if gaussian.head_only is None:
            raise ValueError("kl_to_backbone=False needs Gaussians made by the model's heads (DiagGaussian.head_only)")
        return gaussian.head_only

    @property
    def slot_kind(self) -> str:
        """What the slots hold at inference: inj(Z) from the prior, pause embeddings, or nothing."""
        return {"posterior": "latent", "prior_mean": "latent"}.get(self.latents, self.latents)

    def __call__(self, ntp_loss, prior: DiagGaussian | None, posterior: DiagGaussian | None, step: int,
                 model_out: dict | None = None):  # fmt: skip
        """`model_out`: the model's outputs, whose rationale losses ("rationale_loss",
        "rationale_prior_loss") are weighed in when it gives them."""
        beta, gamma = self.beta(step), self.gamma(step)
        out = {"ntp": ntp_loss, "beta": torch.tensor(beta), "gamma": torch.tensor(gamma)}
        loss = ntp_loss
        for name, weight in self.aux_weights.items():
            if weight and f"{name}_loss" in (model_out or {}):
                out[name] = model_out[f"{name}_loss"]
                loss = loss + weight * out[name]
        trained = lambda g: g if self.kl_to_backbone else self.head_only(g)  # noqa: E731
        # term -> (a, b, weight) of KL(a || b); sg[.] is detach: which head each term trains
        for term, pair in (("joint", lambda: (trained(posterior), trained(prior), beta)),
                           ("forward", lambda: (posterior.detach(), trained(prior), beta)),
                           ("reverse", lambda: (prior.detach(), trained(posterior), gamma))):  # fmt: skip
            if f"{term}_kl" in self.terms:
                a, b, weight = pair()
                out[f"kl_{term}"], counted = self.kl(a, b)
                loss = loss + weight * counted
        out["loss"] = loss
        return out


def _schedule(value) -> Schedule:
    return value if isinstance(value, Schedule) else Schedule(**(value or {}))


def _swap_starts(beta: Schedule, gamma: Schedule) -> tuple[Schedule, Schedule]:
    return Schedule(gamma.start, beta.ramp, beta.max), Schedule(beta.start, gamma.ramp, gamma.max)


# name -> (the KL terms it uses, what fills the latent slots in training); docs/METHOD.md section 4.
OBJECTIVES = {
    "ntp": (set(), "none"),
    "ntp_pause": (set(), "pause"),
    "latent_det": (set(), "prior_mean"),
    "elbo": ({"joint_kl"}, "posterior"),
    "fwd": ({"forward_kl"}, "posterior"),
    "rev": ({"reverse_kl"}, "posterior"),
    "amvl": ({"forward_kl", "reverse_kl"}, "posterior"),
    "amvl_reverse_first": ({"forward_kl", "reverse_kl"}, "posterior"),
}


def build_objective(name: str, beta=None, gamma=None, kl_slot_reduction: str = "mean", free_bits: float = 0.0,
                    rationale_weight: float = 0.0, rationale_prior_weight: float = 0.0,
                    kl_to_backbone: bool = True, prior_answer_weight: float = 0.0) -> KLObjective:  # fmt: skip
    """The objective `name` (see OBJECTIVES) with beta/gamma schedules given as dicts or Schedules;
    the arguments are the keys of the config's `objective` section (`build_objective(**section)`).

    `amvl_reverse_first` takes the same schedules as `amvl` and swaps their start steps.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})")
    if kl_slot_reduction not in ("mean", "sum"):
        raise ValueError(f"kl_slot_reduction must be 'mean' or 'sum', not {kl_slot_reduction!r}")
    beta, gamma = _schedule(beta), _schedule(gamma)
    if name == "amvl_reverse_first":
        beta, gamma = _swap_starts(beta, gamma)
    terms, latents = OBJECTIVES[name]
    return KLObjective(
        terms, beta, gamma, kl_slot_reduction, latents, free_bits, rationale_weight, rationale_prior_weight,
        kl_to_backbone, prior_answer_weight,
    )
