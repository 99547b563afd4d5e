import pytest
import torch

from amvl.objectives import DiagGaussian, Schedule, build_objective, gaussian_kl


def gaussians(batch=3, k=2, d=5, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(batch, k, d, generator=g, requires_grad=grad) for _ in range(2)]
    return DiagGaussian(*tensors)


def test_gaussian_kl_matches_torch_distributions():
    a, b = gaussians(seed=0), gaussians(seed=1)
    dist = lambda g: torch.distributions.Normal(g.mean, g.std)  # noqa: E731
    expected = torch.distributions.kl_divergence(dist(a), dist(b)).sum(-1)
    assert torch.allclose(gaussian_kl(a, b), expected.mean(-1), atol=1e-5)
    assert torch.allclose(gaussian_kl(a, b, slot_reduction="sum"), expected.sum(-1), atol=1e-5)
    assert gaussian_kl(a, a).abs().max() < 1e-6


def test_kl_is_computed_in_float32():
    a, b = gaussians(seed=0), gaussians(seed=1)
    half = lambda g: DiagGaussian(g.mean.bfloat16(), g.logvar.bfloat16())  # noqa: E731
    assert gaussian_kl(half(a), half(b)).dtype == torch.float32


def kl_gradients(name):
    prior, posterior = gaussians(seed=0, grad=True), gaussians(seed=1, grad=True)
    objective = build_objective(name, beta={"max": 1.0}, gamma={"max": 1.0})
    terms = objective(torch.tensor(0.0), prior, posterior, step=10)
    terms["loss"].backward()
    reaches = lambda g: g.mean.grad is not None and g.mean.grad.abs().sum() > 0  # noqa: E731
    return reaches(prior), reaches(posterior)


@pytest.mark.parametrize(
    "name, prior_grad, posterior_grad",
    [("fwd", True, False), ("rev", False, True), ("elbo", True, True), ("amvl", True, True)],
)
def test_kl_gradients_reach_only_their_side(name, prior_grad, posterior_grad):
    assert kl_gradients(name) == (prior_grad, posterior_grad)


def test_amvl_before_gamma_starts_equals_fwd():
    prior, posterior = gaussians(seed=0), gaussians(seed=1)
    ntp = torch.tensor(1.5)
    amvl = build_objective("amvl", beta={"max": 0.3}, gamma={"start": 100, "max": 0.3})
    fwd = build_objective("fwd", beta={"max": 0.3})
    assert torch.equal(amvl(ntp, prior, posterior, 99)["loss"], fwd(ntp, prior, posterior, 99)["loss"])
    assert not torch.equal(amvl(ntp, prior, posterior, 100)["loss"], fwd(ntp, prior, posterior, 100)["loss"])


def test_reverse_first_swaps_the_start_steps():
    objective = build_objective("amvl_reverse_first", beta={"start": 0, "max": 0.1}, gamma={"start": 50, "max": 0.2})
    assert objective.beta(10) == 0.0 and objective.gamma(10) == 0.2
    assert objective.beta(50) == 0.1


def test_schedule_ramps_linearly_after_its_start():
    schedule = Schedule(start=10, ramp=4, max=1.0)
    assert [schedule(s) for s in (9, 10, 11, 13, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0]


def test_tau_zero_returns_the_mean_and_tau_scales_the_noise():
    g = gaussians()
    assert torch.equal(g.sample(tau=0.0), g.mean)
    torch.manual_seed(0)
    noisy = g.sample(tau=1.0)
    torch.manual_seed(0)
    cooler = g.sample(tau=0.2)
    assert torch.allclose(cooler - g.mean, 0.2 * (noisy - g.mean), atol=1e-6)


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("nope")
