"""The Gaussian toy model of docs/METHOD.md section 5, as code that can be checked numerically.

One latent dimension. The answer y is uniform over `options` values with a feature e(y)
(E[e] = 0, E[e^2] = v). The posterior leaks with coefficient a:

    q(z | y) = N(m + a e(y), s^2)

Claims (each has a test):
1. The forward-KL-optimal prior, argmin_p E_y KL(q_y || p), is moment-matched and inflated:
   N(m, s^2 + a^2 v), with residual KL 1/2 log(1 + a^2 v / s^2) that grows with |a|.
2. A decoder trained on posterior samples is near perfect in training and at chance at test,
   where z comes from that prior and carries nothing about y.
3. Adding gamma * KL(sg p || q) to the posterior's objective lowers the leakage coefficient and
   the contamination monotonically in gamma. With r = a^2 v / s^2, the decoder gains the
   Gaussian-channel information 1/2 log(1 + r), and the reverse KL against the forward-optimal
   prior costs 1/2 (2r - log(1 + r)); their balance is r* = (1 - gamma) / (2 gamma) for gamma < 1
   and 0 from gamma = 1 on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ToyModel:
    m: float = 0.0  # centre of every posterior and of the prior
    s: float = 1.0  # posterior standard deviation
    v: float = 1.0  # variance of the answer feature e(y)
    options: int = 4  # how many answers y can take

    def features(self) -> torch.Tensor:
        """e(y) for every answer: evenly spaced, mean 0, variance v exactly."""
        e = torch.arange(self.options, dtype=torch.float64) - (self.options - 1) / 2
        return e / e.pow(2).mean().sqrt() * math.sqrt(self.v)


def forward_optimal_prior(a: float, toy: ToyModel) -> tuple[float, float]:
    """Claim 1, closed form: mean and variance of argmin_p E_y KL(q_y || p)."""
    return toy.m, toy.s**2 + a**2 * toy.v


def residual_kl(a: float, toy: ToyModel) -> float:
    """E_y KL(q_y || p*): the contamination left when the prior is forward-optimal."""
    return 0.5 * math.log1p(a**2 * toy.v / toy.s**2)


def fit_forward_prior(a: float, toy: ToyModel, steps: int = 2000) -> tuple[float, float]:
    """Claim 1, numerically: minimise E_y KL(q_y || N(mu, sigma^2)) by gradient descent."""
    means = toy.m + a * toy.features()
    mu = torch.zeros((), dtype=torch.float64, requires_grad=True)
    log_var = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([mu, log_var], lr=0.05)
    for _ in range(steps):
        var = log_var.exp()
        kl = 0.5 * (log_var - math.log(toy.s**2) + (toy.s**2 + (means - mu) ** 2) / var - 1).mean()
        optimizer.zero_grad()
        kl.backward()
        optimizer.step()
    return mu.item(), log_var.exp().item()


def decoder_accuracy(a: float, toy: ToyModel, samples: int = 20000, seed: int = 0) -> tuple[float, float]:
    """Claim 2: (train, test) accuracy of a nearest-class-mean decoder fit on posterior samples;
    at test z comes from the forward-optimal prior, as it does at inference."""
    g = torch.Generator().manual_seed(seed)
    e = toy.features()
    y = torch.randint(toy.options, (samples,), generator=g)
    z_train = toy.m + a * e[y] + toy.s * torch.randn(samples, generator=g, dtype=torch.float64)
    centres = torch.stack([z_train[y == c].mean() for c in range(toy.options)])  # the fitted decoder
    decode = lambda z: (z[:, None] - centres).abs().argmin(-1)  # noqa: E731
    mean, var = forward_optimal_prior(a, toy)
    z_test = mean + math.sqrt(var) * torch.randn(samples, generator=g, dtype=torch.float64)
    y_test = torch.randint(toy.options, (samples,), generator=g)
    return (decode(z_train) == y).double().mean().item(), (decode(z_test) == y_test).double().mean().item()


def posterior_objective(r: torch.Tensor, gamma: float) -> torch.Tensor:
    """What the posterior minimises, as a function of its signal-to-noise r = a^2 v / s^2:
    minus the decoder's information gain, plus gamma times the reverse KL to the forward-optimal prior."""
    return -0.5 * torch.log1p(r) + gamma * 0.5 * (2 * r - torch.log1p(r))


def optimal_snr(gamma: float) -> float:
    """Claim 3, closed form: the r that minimises `posterior_objective`."""
    return (1 - gamma) / (2 * gamma) if gamma < 1 else 0.0


def fit_leakage(gamma: float, toy: ToyModel, steps: int = 3000) -> float:
    """Claim 3, numerically: the leakage coefficient a the posterior settles at (s fixed)."""
    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([a], lr=0.02)
    for _ in range(steps):
        loss = posterior_objective(a**2 * toy.v / toy.s**2, gamma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return abs(a.item())


def leakage_curve(gammas=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5), toy: ToyModel | None = None) -> dict:
    """The curve the report plots: leakage coefficient, contamination (residual KL) and prior
    variance against the reverse-KL weight gamma."""
    toy = toy or ToyModel()
    leakage = [toy.s * math.sqrt(optimal_snr(g) / toy.v) for g in gammas]
    return {
        "gamma": list(gammas),
        "leakage_coefficient": leakage,
        "contamination": [residual_kl(a, toy) for a in leakage],
        "prior_variance": [forward_optimal_prior(a, toy)[1] for a in leakage],
    }
