"""Beta sampling (Lee et al. 2024): the Beta CDF against closed forms, its inverse, and the schedule."""
import math

import numpy as np
import pytest
import torch

from fewstep.core.model_sigmas import ModelSigmas
from fewstep.schedules import get_schedule
from fewstep.schedules.beta import beta_cdf, beta_ppf, beta_schedule, beta_times

X = np.linspace(0.0, 1.0, 401)

CLOSED_FORMS = {
    (1.0, 1.0): lambda x: x,
    (1.0, 2.0): lambda x: 1 - (1 - x) ** 2,
    (2.0, 1.0): lambda x: x ** 2,
    (0.5, 0.5): lambda x: 2 / math.pi * np.arcsin(np.sqrt(x)),
    # I_x(2, 3) = P(Binomial(4, x) >= 2)
    (2.0, 3.0): lambda x: sum(math.comb(4, j) * x ** j * (1 - x) ** (4 - j) for j in range(2, 5)),
    (7.0, 1.0): lambda x: x ** 7,
}


@pytest.mark.parametrize("ab", sorted(CLOSED_FORMS))
def test_cdf_equals_closed_forms(ab):
    a, b = ab
    np.testing.assert_allclose(beta_cdf(X, a, b), CLOSED_FORMS[ab](X), rtol=0, atol=1e-13)


@pytest.mark.parametrize("ab", [(0.6, 0.6), (0.3, 3.0), (4.0, 0.7), (40.0, 60.0)])
def test_ppf_inverts_cdf_and_symmetry(ab):
    a, b = ab
    q = np.linspace(0.001, 0.999, 97)
    x = beta_ppf(q, a, b)
    assert (np.diff(x) > 0).all()
    np.testing.assert_allclose(beta_cdf(x, a, b), q, rtol=0, atol=1e-12)
    # X ~ Beta(a, b)  <=>  1 - X ~ Beta(b, a)
    np.testing.assert_allclose(beta_ppf(1 - q, b, a), 1 - x, rtol=0, atol=1e-12)


def test_cdf_of_beta_0_6_has_the_right_tails():
    # near 0, I_x(a, b) ~ x^a / (a B(a, b)): the density's integrable singularity is handled
    a = b = 0.6
    B = math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    x = 1e-8
    assert beta_cdf(x, a, b) == pytest.approx(x ** a / (a * B), rel=1e-6)
    assert beta_cdf(0.5, a, b) == pytest.approx(0.5, abs=1e-14)


@pytest.mark.parametrize("ms", [ModelSigmas.discrete_vp(), ModelSigmas.flow(3.0)], ids=["eps", "flow"])
def test_schedule_at_the_beta_times(ms):
    n = 10
    s = beta_schedule(n, ms)
    u = beta_times(n)
    assert s.shape == (n + 1,) and s[-1] == 0 and float(s[0]) == pytest.approx(ms.sigma_max, rel=1e-12)
    assert (s[1:] < s[:-1]).all()
    torch.testing.assert_close(ms.time_of(s[:-1]), torch.from_numpy(u), rtol=0, atol=1e-9)
    # alpha = beta = 1 is the uniform distribution: model times 1 - i/n
    np.testing.assert_allclose(beta_times(n, 1.0, 1.0), 1 - np.arange(n) / n, atol=1e-15)
    # dense at both ends: the first and last gaps in model time are the smallest
    gaps = -np.diff(u)
    assert gaps[0] < gaps[n // 2] and gaps[-1] < gaps[n // 2]
    assert torch.equal(get_schedule("beta", n, ms), s)


@pytest.mark.parametrize("kw, match", [(dict(alpha=0.0), "alpha must be in"), (dict(beta=float("nan")), "beta must be in"),
                                       (dict(alpha=101.0), "alpha must be in")])
def test_bad_shape_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        beta_times(10, **kw)
