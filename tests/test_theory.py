"""docs/METHOD.md section 5's toy model: each claim checked numerically."""

import pytest

from amvl import theory

TOY = theory.ToyModel(m=0.5, s=1.0, v=2.0, options=4)


def test_features_have_the_stated_moments():
    e = TOY.features()
    assert abs(e.mean().item()) < 1e-12 and abs(e.pow(2).mean().item() - TOY.v) < 1e-12


@pytest.mark.parametrize("a", [0.0, 0.5, 2.0])
def test_forward_optimal_prior_is_moment_matched_and_inflated(a):
    mean, var = theory.fit_forward_prior(a, TOY)
    closed_mean, closed_var = theory.forward_optimal_prior(a, TOY)
    assert mean == pytest.approx(closed_mean, abs=1e-3) and var == pytest.approx(closed_var, rel=1e-3)
    assert var >= TOY.s**2


def test_residual_kl_grows_with_leakage():
    kls = [theory.residual_kl(a, TOY) for a in (0.0, 0.5, 1.0, 2.0, -3.0)]
    assert kls[0] == 0 and kls[1] < kls[2] < kls[3] < kls[4]


def test_decoder_on_posterior_samples_is_perfect_in_training_and_at_chance_at_test():
    train, test = theory.decoder_accuracy(a=6.0, toy=TOY)
    assert train > 0.95 and test == pytest.approx(1 / TOY.options, abs=0.02)
    no_leak_train, _ = theory.decoder_accuracy(a=0.0, toy=TOY)
    assert no_leak_train == pytest.approx(1 / TOY.options, abs=0.02)


@pytest.mark.parametrize("gamma", [0.1, 0.3, 0.6, 1.2])
def test_numerical_optimum_matches_the_closed_form(gamma):
    a = theory.fit_leakage(gamma, TOY)
    expected = TOY.s * (theory.optimal_snr(gamma) / TOY.v) ** 0.5
    assert a == pytest.approx(expected, abs=2e-2)


def test_reverse_term_lowers_leakage_and_contamination_monotonically():
    curve = theory.leakage_curve(toy=TOY)
    leaking = [i for i, a in enumerate(curve["leakage_coefficient"]) if a > 0]
    assert len(leaking) >= 5
    for key in ("leakage_coefficient", "contamination", "prior_variance"):
        values = curve[key]
        assert all(values[i] > values[i + 1] for i in leaking), key  # strictly, while anything leaks
    assert curve["leakage_coefficient"][-1] == 0  # gamma >= 1: no leak at all
